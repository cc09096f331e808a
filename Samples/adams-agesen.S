/*
 * adams-agesen: the microbenchmarks of Adams & Agesen, "A Comparison of Software and
 * Hardware Techniques for x86 Virtualization" (ASPLOS 2006), each ITERATIONS times:
 *   1 syscall  a null system call from ring 3: INT 0x80 and IRETQ. Where the backend turns
 *              INT n from ring 3 into #UD (kvm_pvm; README.md), the #UD handler performs it.
 *   2 in       IN from a port (the UART's LSR)
 *   3 cr8wr    MOV to CR8 (task priority)
 *   4 callret  CALL and RET
 *   5 pgfault  a page fault on a not-present page that the guest's handler maps in
 *   6 divzero  a divide error that the guest's handler skips
 *   7 ptemod   a store to a page-table entry
 * Every single operation is bracketed by phase markers on port 0x502: PHASE before it,
 * 0x8000|PHASE right after it (README.md "Phase markers"). Ends with status 0 via 0x501.
 */
#include "exitscope.h"
#include "config.h"
#include "rt64.h"

#ifndef ITERATIONS
#define ITERATIONS 100
#endif

EXITSCOPE_CONFIG("mode=long64 vcpus=1 irqchip=none memory=16")

#define PHASE_SYSCALL 1
#define PHASE_IN      2
#define PHASE_CR8WR   3
#define PHASE_CALLRET 4
#define PHASE_PGFAULT 5
#define PHASE_DIVZERO 6
#define PHASE_PTEMOD  7

#define VECTOR_SYSCALL  0x80
#define VECTOR_CONTINUE 0x81

/* The page the pgfault phase unmaps, and the one whose PTE ptemod rewrites (below 2 MiB). */
#define FAULT_PAGE    0x1F0000
#define PTEMOD_PAGE   0x1F1000

.macro begin phase
    mov $MARKER_PORT, %dx
    mov $\phase, %eax
    out %ax, %dx
.endm
.macro end phase
    mov $MARKER_PORT, %dx
    mov $PHASE_END(\phase), %eax
    out %ax, %dx
.endm

    .code64
    .section .text.start, "ax"
    .globl _start
_start:
    lea rt64_stack_top(%rip), %rsp
    call rt64_init
    mov $VECTOR_SYSCALL, %edi
    lea null_syscall_entry(%rip), %rsi
    call rt64_set_gate
    mov $VECTOR_CONTINUE, %edi
    lea continue_entry(%rip), %rsi
    call rt64_set_gate
    mov $14, %edi
    lea pf_handler(%rip), %rsi
    call rt64_set_handler
    xor %edi, %edi
    lea de_handler(%rip), %rsi
    call rt64_set_handler
    mov $6, %edi
    lea ud_handler(%rip), %rsi
    call rt64_set_handler
    lea msg_start(%rip), %rdi
    call serial_puts

    /* 1: syscall, from ring 3; the user code comes back through INT 0x81. */
    lea user_syscalls(%rip), %rdi
    lea user_stack_top(%rip), %rsi
    call enter_user                /* does not return */

kernel_continue:                   /* on rt64's kernel stack, at CPL0 again */
    /* 2: in */
    mov $ITERATIONS, %r12d
1:  begin PHASE_IN
    mov $COM1_LSR, %dx
    in %dx, %al
    end PHASE_IN
    dec %r12d
    jnz 1b

    /* 3: cr8wr */
    mov $ITERATIONS, %r12d
    xor %ebx, %ebx
2:  begin PHASE_CR8WR
    mov %rbx, %cr8
    end PHASE_CR8WR
    dec %r12d
    jnz 2b

    /* 4: callret */
    mov $ITERATIONS, %r12d
3:  begin PHASE_CALLRET
    call null_function
    end PHASE_CALLRET
    dec %r12d
    jnz 3b

    /* 5: pgfault: unmap the page (outside the bracket), touch it (inside). */
    mov $FAULT_PAGE, %edi
    call rt64_pte
    mov %rax, %r13
    mov $ITERATIONS, %r12d
4:  andq $~1, (%r13)
    invlpg FAULT_PAGE
    begin PHASE_PGFAULT
    mov FAULT_PAGE, %al
    end PHASE_PGFAULT
    dec %r12d
    jnz 4b

    /* 6: divzero */
    mov $ITERATIONS, %r12d
5:  begin PHASE_DIVZERO
    xor %ecx, %ecx
    xor %edx, %edx
    div %rcx                       /* 3 bytes; the handler skips it */
    end PHASE_DIVZERO
    dec %r12d
    jnz 5b

    /* 7: ptemod: rewrite a PTE (alternating its accessed bit). */
    mov $PTEMOD_PAGE, %edi
    call rt64_pte
    mov %rax, %r13
    mov (%r13), %rbx
    mov $ITERATIONS, %r12d
6:  xor $0x20, %rbx
    begin PHASE_PTEMOD
    mov %rbx, (%r13)
    end PHASE_PTEMOD
    dec %r12d
    jnz 6b

    lea msg_done(%rip), %rdi
    call serial_puts
    mov $ITERATIONS, %edi
    call serial_putdec
    mov $10, %edi
    call serial_putc
    lea msg_faults(%rip), %rdi
    call serial_puts
    mov page_faults(%rip), %rdi
    call serial_putdec
    lea msg_divides(%rip), %rdi
    call serial_puts
    mov divide_errors(%rip), %rdi
    call serial_putdec
    lea msg_syscalls(%rip), %rdi
    call serial_puts
    mov null_syscalls(%rip), %rdi
    call serial_putdec
    mov $10, %edi
    call serial_putc
    xor %edi, %edi
    cmpq $ITERATIONS, page_faults(%rip)
    setne %dil
    cmpq $ITERATIONS, divide_errors(%rip)
    setne %al
    or %al, %dil
    cmpq $ITERATIONS, null_syscalls(%rip)
    setne %al
    or %al, %dil
    call guest_exit

null_function:
    ret

/* Ring 3 (IOPL=3, so the markers are plain OUTs). */
user_syscalls:
    mov $ITERATIONS, %r12d
1:  begin PHASE_SYSCALL
    int $VECTOR_SYSCALL
    end PHASE_SYSCALL
    dec %r12d
    jnz 1b
    int $VECTOR_CONTINUE
    ud2                            /* not reached */

/* INT 0x80: the null system call. */
null_syscall_entry:
    incq null_syscalls(%rip)
    iretq

/* INT 0x81: back to the kernel's benchmark, on a fresh kernel stack. */
continue_entry:
    lea rt64_stack_top(%rip), %rsp
    mov $KERNEL_DS, %ax
    mov %ax, %ds
    mov %ax, %es
    jmp kernel_continue

/* #PF: map the page back; the faulting load then runs again. */
pf_handler:
    incq page_faults(%rip)
    mov %cr2, %rdi
    call rt64_pte
    orq $1, (%rax)
    mov %cr2, %rax
    invlpg (%rax)
    ret

/* #UD on INT 0x80/0x81 from ring 3: do what the gate would have done. */
ud_handler:
    mov FRAME_RIP(%rdi), %rax
    cmpb $0xCD, (%rax)
    jne 2f
    cmpb $VECTOR_SYSCALL, 1(%rax)
    jne 1f
    incq null_syscalls(%rip)
    addq $2, FRAME_RIP(%rdi)
    ret
1:  cmpb $VECTOR_CONTINUE, 1(%rax)
    jne 2f
    lea rt64_stack_top(%rip), %rsp
    jmp kernel_continue
2:  lea msg_ud(%rip), %rdi
    call serial_puts
    mov $0x86, %edi
    call guest_exit

/* #DE: skip the 3-byte DIV. */
de_handler:
    incq divide_errors(%rip)
    addq $3, FRAME_RIP(%rdi)
    ret

    .section .rodata
msg_start:    .asciz "adams-agesen: syscall in cr8wr callret pgfault divzero ptemod\n"
msg_done:     .asciz "adams-agesen: done, iterations "
msg_faults:   .asciz "page faults "
msg_divides:  .asciz " divide errors "
msg_syscalls: .asciz " null syscalls "
msg_ud:       .asciz "unexpected #UD\n"

    .data
page_faults:   .quad 0
divide_errors: .quad 0
null_syscalls: .quad 0

    .bss
    .balign 16
    .skip 4096
user_stack_top:
