/*
 * protected-mode: enters in real mode, switches itself to 32-bit protected mode (own GDT,
 * paging off), then talks to the scratch MMIO device with loads and stores of each size,
 * and does string I/O: REP OUTSB of a line to COM1, REP INSB from the UART scratch register,
 * REP INSW from an unclaimed port (all ones). Prints what it read; status 0 through 0x501
 * when every check held, 1 otherwise. An ELF32 image.
 */
#include "exitscope.h"
#include "config.h"

EXITSCOPE_CONFIG("mode=real vcpus=1 irqchip=none memory=16")

    .code16
    .section .text.start, "ax"
    .globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x1000, %sp
    lgdtl gdt_ptr
    mov %cr0, %eax
    or $1, %eax                     /* CR0.PE */
    mov %eax, %cr0
    ljmpl $0x08, $protected

    .code32
protected:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $stack_top, %esp
    xor %ebp, %ebp                  /* failed checks */

    mov $msg_hello, %esi
    call puts

    /* MMIO: a dword, a word and a byte store, read back at each size. */
    mov $SCRATCH_MMIO_BASE, %ebx
    movl $0x12345678, (%ebx)
    movw $0xBEEF, 4(%ebx)
    movb $0x5A, 6(%ebx)
    mov (%ebx), %eax
    cmp $0x12345678, %eax
    setne %cl
    movzwl 4(%ebx), %eax
    cmp $0xBEEF, %eax
    setne %ch
    or %ch, %cl
    movzbl 6(%ebx), %eax
    cmp $0x5A, %eax
    setne %ch
    or %ch, %cl
    movzbl %cl, %ecx
    add %ecx, %ebp
    mov $msg_mmio, %esi
    call puts
    mov (%ebx), %eax
    call puthex
    mov $msg_space, %esi
    call puts
    movzwl 4(%ebx), %eax
    call puthex
    mov $msg_space, %esi
    call puts
    movzbl 6(%ebx), %eax
    call puthex
    mov $msg_nl, %esi
    call puts

    /* REP OUTSB: the whole line in one instruction, after one THRE poll (the FIFO takes 16). */
    call wait_thre
    mov $msg_outsb, %esi
    mov $msg_outsb_len, %ecx
    mov $COM1, %dx
    cld
    rep outsb

    /* REP INSB from the UART scratch register after writing it. */
    mov $COM1_SCR, %dx
    mov $0xA5, %al
    out %al, %dx
    mov $buffer, %edi
    mov $8, %ecx
    rep insb
    mov $buffer, %esi
    mov $8, %ecx
1:  lodsb
    cmp $0xA5, %al
    je 2f
    inc %ebp
2:  loop 1b
    mov $msg_insb, %esi
    call puts
    movzbl buffer+7, %eax
    call puthex
    mov $msg_nl, %esi
    call puts

    /* REP INSW from a port nobody claims: eight words of all ones. */
    mov $UNCLAIMED_PORT, %dx
    mov $buffer, %edi
    mov $8, %ecx
    rep insw
    mov $buffer, %esi
    mov $8, %ecx
3:  lodsw
    cmp $0xFFFF, %ax
    je 4f
    inc %ebp
4:  loop 3b
    mov $msg_insw, %esi
    call puts
    movzwl buffer+14, %eax
    call puthex
    mov $msg_nl, %esi
    call puts

    test %ebp, %ebp
    jnz 5f
    mov $msg_pass, %esi
    call puts
    xor %eax, %eax
    jmp 6f
5:  mov $msg_fail, %esi
    call puts
    mov $1, %eax
6:  mov $EXIT_PORT, %dx
    out %al, %dx
7:  hlt
    jmp 7b

#include "serial32.inc"

    .section .rodata
msg_hello:  .asciz "protected mode: on\n"
msg_mmio:   .asciz "mmio scratch: "
msg_outsb:  .ascii "rep outsb: ok\n"
    .set msg_outsb_len, . - msg_outsb
msg_insb:   .asciz "rep insb scratch register: "
msg_insw:   .asciz "rep insw unclaimed port: "
msg_pass:   .asciz "protected-mode: PASS\n"
msg_fail:   .asciz "protected-mode: FAIL\n"
msg_space:  .asciz " "

    .data
    .balign 8
gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF        /* 0x08 code, 32-bit, flat */
    .quad 0x00CF92000000FFFF        /* 0x10 data, flat */
gdt_ptr:
    .word gdt_ptr - gdt - 1
    .long gdt

    .bss
buffer:     .skip 64
    .balign 16
            .skip 4096
stack_top:
