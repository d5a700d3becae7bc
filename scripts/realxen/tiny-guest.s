# The test guest of the real-Xen stage: the smallest 64-bit PV kernel Xen runs and keeps running.
#
# A Linux guest costs ~8 s per `xl create` under emulation (dom0 unpacks a 60 MB kernel) and then
# boots for seconds of emulated CPU; this one is built in under a second (512 bytes of code and
# notes) and then sleeps in Xen for good, using no CPU. What it cannot do is what needs a guest's
# cooperation: it does not answer Xen's shutdown, reboot or suspend requests (the Linux guest,
# kept for the tests of those, does) and brings up only vCPU 0.
#
# Build (build.sh): as -o tiny-guest.o tiny-guest.s && ld -T tiny-guest.lds -o tiny-guest tiny-guest.o

        .equ XEN_ELFNOTE_ENTRY, 1
        .equ XEN_ELFNOTE_VIRT_BASE, 3
        .equ XEN_ELFNOTE_PADDR_OFFSET, 4
        .equ XEN_ELFNOTE_XEN_VERSION, 5
        .equ XEN_ELFNOTE_GUEST_OS, 6
        .equ XEN_ELFNOTE_LOADER, 8
        .equ HYPERVISOR_sched_op, 29
        .equ SCHEDOP_poll, 3

# One ELF note "Xen" of the given type; the domain builder reads them to know how to load us.
        .macro xen_note type, desc:vararg
        .balign 4
        .long 4, 2f - 1f, \type
        .asciz "Xen"
1:      \desc
2:      .balign 4
        .endm

        .section .note.Xen, "a", @note
        xen_note XEN_ELFNOTE_GUEST_OS, .asciz "xend-ext-tiny"
        xen_note XEN_ELFNOTE_XEN_VERSION, .asciz "xen-3.0"     # the only ABI libxc loads
        xen_note XEN_ELFNOTE_LOADER, .asciz "generic"
        xen_note XEN_ELFNOTE_VIRT_BASE, .quad 0                # linked where it runs: no relocation
        xen_note XEN_ELFNOTE_PADDR_OFFSET, .quad 0
        xen_note XEN_ELFNOTE_ENTRY, .quad _start

        .text
        .globl _start
# Xen enters in 64-bit mode with a stack and start_info in %rsi; a PV kernel makes hypercalls with
# `syscall` (%rax = number, %rdi, %rsi = arguments). SCHEDOP_poll on no event channels and with no
# timeout blocks the vCPU until any event arrives (event upcalls stay masked, as the builder left
# them, so no handler is needed); then we block again.
_start:
        mov $HYPERVISOR_sched_op, %eax
        mov $SCHEDOP_poll, %edi
        lea poll(%rip), %rsi
        syscall
        jmp _start

        .data
# struct sched_poll: ports (a guest handle), nr_ports (0), timeout (0: none)
poll:   .quad 0, 0, 0
