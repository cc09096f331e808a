/*
 * hostile-page-tables: the guest overwrites its own page tables.
 *   1. PDPT[1] (linear 1-2 GiB) now points its page directory at 0xC0000000, where no RAM
 *      is: a load from linear 0x40000000 makes the page walk read nobody's memory;
 *   2. a PTE now maps linear 0x1F0000 to guest-physical 32 MiB, past RAM (16 MiB): a load
 *      through it reaches nobody (all ones);
 *   3. PML4[0], which maps the code, the stack and the IDT, is cleared and CR3 reloaded:
 *      the next fetch faults, the fault cannot be delivered: a triple fault (SHUTDOWN).
 * Prints a line per step (what the load returned, or the #PF it raised); ends in SHUTDOWN.
 */
#include "exitscope.h"
#include "config.h"
#include "rt64.h"

EXITSCOPE_CONFIG("mode=long64 vcpus=1 irqchip=none memory=16")

#define REMAP_PAGE 0x1F0000

    .code64
    .section .text.start, "ax"
    .globl _start
_start:
    lea rt64_stack_top(%rip), %rsp
    call rt64_init
    mov $14, %edi
    lea pf_handler(%rip), %rsi
    call rt64_set_handler

    /* 1. A page directory where no RAM is. */
    lea msg_step1(%rip), %rdi
    call serial_puts
    mov $(UNCLAIMED_MMIO | 7), %eax
    mov %rax, rt64_pdpt+8(%rip)
    mov %cr3, %rax
    mov %rax, %cr3
    lea 1f(%rip), %rax
    mov %rax, resume(%rip)
    mov $0x40000000, %eax
    mov (%rax), %rax
    call show
1:
    /* 2. A page past the end of RAM. */
    lea msg_step2(%rip), %rdi
    call serial_puts
    mov $REMAP_PAGE, %edi
    call rt64_pte
    movq $((32 << 20) | 7), (%rax)
    invlpg REMAP_PAGE
    lea 2f(%rip), %rax
    mov %rax, resume(%rip)
    mov REMAP_PAGE, %rax
    call show
2:
    /* 3. Pull the floor away. */
    lea msg_step3(%rip), %rdi
    call serial_puts
    movq $0, rt64_pml4(%rip)
    mov %cr3, %rax
    mov %rax, %cr3
    .globl after_cr3
after_cr3:
    nop                            /* never fetched */
    mov $0x7F, %edi                /* not reached: would end with status 127 */
    call guest_exit

show:
    mov %rax, %rbx
    lea msg_read(%rip), %rdi
    call serial_puts
    mov %rbx, %rdi
    call serial_puthex
    mov $'\n', %edi
    jmp serial_putc

pf_handler:
    push %rbx
    mov %rdi, %rbx
    lea msg_pf(%rip), %rdi
    call serial_puts
    mov %cr2, %rdi
    call serial_puthex
    lea msg_error(%rip), %rdi
    call serial_puts
    mov FRAME_ERROR(%rbx), %rdi
    call serial_puthex
    mov $'\n', %edi
    call serial_putc
    mov resume(%rip), %rax
    mov %rax, FRAME_RIP(%rbx)
    pop %rbx
    ret

    .section .rodata
msg_step1: .asciz "hostile-page-tables: page directory at 0xc0000000, load from 0x40000000\n"
msg_step2: .asciz "hostile-page-tables: PTE to 32 MiB (past RAM), load through it\n"
msg_step3: .asciz "hostile-page-tables: clearing PML4[0]\n"
msg_read:  .asciz "  read "
msg_pf:    .asciz "  #PF at "
msg_error: .asciz " error "

    .data
resume: .quad 0
