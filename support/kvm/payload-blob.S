/* SPDX-License-Identifier: MIT */
/*
 * tests/kvm/payload-blob.S - embeds the flat payload image (built by
 * kvm.mk; its path comes in KVM_PAYLOAD_BIN) into the host test binary as
 * kvm_payload_image .. kvm_payload_image_end, which vmm.c copies into the
 * guest. Read-only data only.
 */
	.section .rodata.kvm_payload, "a"
	.balign 16
	.globl kvm_payload_image, kvm_payload_image_end
kvm_payload_image:
	.incbin KVM_PAYLOAD_BIN
kvm_payload_image_end:

	.section .note.GNU-stack, "", @progbits
