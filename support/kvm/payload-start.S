/* SPDX-License-Identifier: MIT */
/*
 * tests/kvm/payload-start.S - entry of the 32-bit guest payload, linked
 * first at PAYLOAD_LOAD_GPA (payload.ld). Owns nothing but the hand-off:
 * the VMM enters here in flat 32-bit protected mode with esp at the top of
 * this vCPU's stack page and esi = its command block's GPA.
 */
	.section .text.start, "ax"
	.code32
	.globl _start
_start:
	cld			/* the C ABI expects DF clear */
	push %esi		/* payload_main(cmd) */
	call payload_main
	/* payload_main never returns; if it did, stop where the host sees it. */
1:	cli
	hlt
	jmp 1b

	.section .note.GNU-stack, "", @progbits
