/* The KVM/QEMU test guest: a multiboot kernel QEMU boots directly (libvirt's <os><kernel>) in
 * milliseconds, under KVM or TCG alike. With "burn" on its command line its first vCPU spins
 * for ever (it wants a whole pCPU); otherwise it halts (it wants none). It says which on the
 * serial port. Other vCPUs are never started: they stay in wait-for-SIPI and use no CPU. */
        .text
        .code32
        .align 4                        /* the multiboot header, first in the image */
        .long 0x1BADB002                /* magic */
        .long 0                         /* flags: none (QEMU reads our ELF headers) */
        .long -0x1BADB002               /* checksum */
        .globl _start
_start:
        cli
        mov $stack_top, %esp
        mov %ebx, %esi                  /* the multiboot information */
        testl $4, (%esi)                /* a command line given? */
        jz idle
        mov 16(%esi), %esi
scan:   cmpb $0, (%esi)
        je idle
        cmpl $0x6e727562, (%esi)        /* "burn" */
        je burn
        inc %esi
        jmp scan
burn:   mov $msg_burn, %esi
        call puts
1:      jmp 1b
idle:   mov $msg_idle, %esi
        call puts
2:      hlt
        jmp 2b

puts:   mov $0x3f8, %dx                 /* COM1 */
3:      lodsb
        test %al, %al
        jz 4f
        out %al, %dx
        jmp 3b
4:      ret

        .section .rodata
msg_burn: .asciz "tiny-kvm: burning\n"
msg_idle: .asciz "tiny-kvm: idle\n"

        .bss
        .align 16
        .space 4096
stack_top:
