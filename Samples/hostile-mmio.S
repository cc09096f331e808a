/*
 * hostile-mmio: MMIO to odd and unmapped places: unaligned and straddling accesses at both
 * ends of the scratch device, an access that is half RAM and half nothing at the end of RAM,
 * loads and a locked read-modify-write where nobody is mapped (0xC0000000, the LAPIC's page
 * with irqchip=none, the top of the 4 GiB space), and REP MOVSB across the device's end.
 * Prints what each read returned; status 0 through 0x501 (the VMM decides the values).
 */
#include "exitscope.h"
#include "config.h"
#include "rt64.h"

EXITSCOPE_CONFIG("mode=long64 vcpus=1 irqchip=none memory=16")

#define RAM_END (16 << 20)

.macro show label
    mov %rax, %r12
    lea \label(%rip), %rdi
    call serial_puts
    mov %r12, %rdi
    call serial_puthex
    mov $'\n', %edi
    call serial_putc
.endm

    .code64
    .section .text.start, "ax"
    .globl _start
_start:
    lea rt64_stack_top(%rip), %rsp
    call rt64_init
    mov $SCRATCH_MMIO_BASE, %rbx

    movw $0x1234, 1(%rbx)                          /* odd address, inside */
    movzwl 1(%rbx), %eax
    show msg_odd
    mov $-1, %rax
    mov %rax, SCRATCH_MMIO_SIZE - 4(%rbx)          /* straddles the device's end */
    mov SCRATCH_MMIO_SIZE - 4(%rbx), %rax
    show msg_end
    movl $0xA5A5A5A5, -2(%rbx)                     /* straddles the device's start */
    mov -2(%rbx), %eax
    show msg_start
    mov $RAM_END - 4, %r13d
    movl $0x11223344, (%r13)
    mov (%r13), %rax                               /* half RAM, half nothing */
    show msg_ramend
    mov $UNCLAIMED_MMIO, %r13d
    mov (%r13), %rax
    show msg_unmapped
    movq $0, (%r13)
    lock orl $1, 8(%r13)                           /* locked RMW where nobody is */
    mov 8(%r13), %eax
    show msg_locked
    mov $LAPIC_BASE, %r13d
    mov 0x30(%r13), %eax                           /* the LAPIC version register, no LAPIC */
    show msg_lapic
    mov $0xFFFFFFF8, %r13d
    mov (%r13), %rax                               /* the last 8 bytes below 4 GiB */
    show msg_top
    lea pattern(%rip), %rsi
    lea SCRATCH_MMIO_SIZE - 8(%rbx), %rdi
    mov $16, %ecx
    cld
    rep movsb                                      /* 8 bytes in, 8 past the device */
    mov SCRATCH_MMIO_SIZE - 8(%rbx), %rax
    show msg_movs

    lea msg_done(%rip), %rdi
    call serial_puts
    xor %edi, %edi
    call guest_exit

    .section .rodata
msg_odd:      .asciz "hostile-mmio: word at scratch+1: "
msg_end:      .asciz "hostile-mmio: qword across the scratch end: "
msg_start:    .asciz "hostile-mmio: dword across the scratch start: "
msg_ramend:   .asciz "hostile-mmio: qword across the end of RAM: "
msg_unmapped: .asciz "hostile-mmio: qword at 0xc0000000: "
msg_locked:   .asciz "hostile-mmio: lock or at 0xc0000008: "
msg_lapic:    .asciz "hostile-mmio: LAPIC version without a LAPIC: "
msg_top:      .asciz "hostile-mmio: qword at 0xfffffff8: "
msg_movs:     .asciz "hostile-mmio: rep movsb across the scratch end: "
msg_done:     .asciz "hostile-mmio: done\n"
pattern:      .ascii "0123456789abcdef"
