# Entry and ELF notes of the test guest of the real-Xen stage (the guest itself: tiny-guest.c).
#
# Build (build.sh): as tiny-guest.s, gcc -c tiny-guest.c, ld -T tiny-guest.lds.

        .equ XEN_ELFNOTE_ENTRY, 1
        .equ XEN_ELFNOTE_VIRT_BASE, 3
        .equ XEN_ELFNOTE_PADDR_OFFSET, 4
        .equ XEN_ELFNOTE_XEN_VERSION, 5
        .equ XEN_ELFNOTE_GUEST_OS, 6
        .equ XEN_ELFNOTE_LOADER, 8
        .equ XEN_ELFNOTE_SUSPEND_CANCEL, 14

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
        # a cancelled suspend (a failed save) returns 1 in the same domain, which we handle
        xen_note XEN_ELFNOTE_SUSPEND_CANCEL, .long 1

        .text
        .globl _start
# Xen enters in 64-bit mode with start_info's address in %rsi and a one-page stack; we take our
# own stack and call main(start_info).
_start:
        lea stack_top(%rip), %rsp
        mov %rsi, %rdi
        call main
        ud2

# Where the other vCPUs start when brought up: they sleep in SCHEDOP_poll on no event channel (any
# event wakes them; they sleep again) and need no stack, hypercalls being made on Xen's. In a
# guest started with `burn` (tiny-guest.c's `burning`) they spin instead.
        .globl secondary_start
secondary_start:
        cmpl $0, burning(%rip)
        je 1f
        pause
        jmp secondary_start
1:      mov $29, %eax                   # HYPERVISOR_sched_op
        mov $3, %edi                    # SCHEDOP_poll
        lea no_events(%rip), %rsi
        syscall
        jmp secondary_start

        .section .rodata
no_events:
        .quad 0, 0, 0                   # struct sched_poll: no ports, none of them, no timeout

        .section .note.GNU-stack, "", @progbits   # no executable stack wanted

        .bss
        .balign 16
        .skip 16384
stack_top:
