/*
 * hostile-rep-ins: REP INS with absurd counts. RCX = 2^64 - 1 for REP INSB from COM1, and
 * ECX = 2^32 - 1 for an address-size-32 REP INSW, each into a 4 KiB buffer page whose next
 * page is not present; the page fault stops each one. Then REP OUTSB with RCX = 2^64 - 1 from
 * the same page. The #PF handler reports where each stopped and resumes after the instruction.
 * A VMM must take its count from the exit (bounded by KVM), not trust RCX.
 * Prints one line per instruction; status 0 through 0x501.
 */
#include "exitscope.h"
#include "config.h"
#include "rt64.h"

EXITSCOPE_CONFIG("mode=long64 vcpus=1 irqchip=none memory=16")

#define BUFFER_PAGE 0x1F0000
#define GUARD_PAGE  0x1F1000

    .code64
    .section .text.start, "ax"
    .globl _start
_start:
    lea rt64_stack_top(%rip), %rsp
    call rt64_init
    mov $14, %edi
    lea pf_handler(%rip), %rsi
    call rt64_set_handler
    mov $GUARD_PAGE, %edi
    call rt64_pte
    andq $~1, (%rax)               /* the guard page: not present */
    invlpg GUARD_PAGE
    cld

    lea msg_insb(%rip), %rdi
    call serial_puts
    mov $BUFFER_PAGE, %edi
    mov $-1, %rcx
    mov $COM1, %dx
    lea 1f(%rip), %rax
    mov %rax, resume(%rip)
    rep insb
1:  lea msg_insw(%rip), %rdi
    call serial_puts
    mov $BUFFER_PAGE, %edi
    mov $-1, %ecx
    mov $COM1_SCR, %dx
    lea 2f(%rip), %rax
    mov %rax, resume(%rip)
    addr32 rep insw
2:  lea msg_outsb(%rip), %rdi
    call serial_puts
    mov $BUFFER_PAGE + 0xF00, %esi /* 256 bytes before the guard page */
    mov $-1, %rcx
    mov $COM1_SCR, %dx
    lea 3f(%rip), %rax
    mov %rax, resume(%rip)
    rep outsb
3:  lea msg_done(%rip), %rdi
    call serial_puts
    xor %edi, %edi
    cmpq $3, faults(%rip)
    setne %dil
    call guest_exit

/* #PF: report CR2 and how much count is left, then go on after the string instruction. */
pf_handler:
    push %rbx
    mov %rdi, %rbx
    incq faults(%rip)
    lea msg_pf(%rip), %rdi
    call serial_puts
    mov %cr2, %rdi
    call serial_puthex
    lea msg_rcx(%rip), %rdi
    call serial_puts
    mov FRAME_RCX(%rbx), %rdi
    call serial_puthex
    mov $'\n', %edi
    call serial_putc
    mov resume(%rip), %rax
    mov %rax, FRAME_RIP(%rbx)
    pop %rbx
    ret

    .section .rodata
msg_insb:  .asciz "hostile-rep-ins: rep insb, rcx=2^64-1\n"
msg_insw:  .asciz "hostile-rep-ins: addr32 rep insw, ecx=2^32-1\n"
msg_outsb: .asciz "hostile-rep-ins: rep outsb, rcx=2^64-1\n"
msg_pf:    .asciz "  stopped by #PF at "
msg_rcx:   .asciz ", rcx left "
msg_done:  .asciz "hostile-rep-ins: done\n"

    .data
faults: .quad 0
resume: .quad 0
