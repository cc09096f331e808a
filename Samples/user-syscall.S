/*
 * user-syscall: SYSCALL from CPL3 into a supervisor-only entry page, as Linux has it (issue 9).
 * kvm_pvm runs the SYSCALL natively but leaves the vCPU at CPL3, so the fetch at LSTAR faults;
 * like Linux's, this #PF entry starts with CLAC, which KVM's emulator cannot run here, so the
 * VMM gets the exit and performs the SYSCALL itself (Sources/VMM/Completion.swift,
 * SyscallRedelivery). The user code makes two calls: the first returns through SYSRETQ with
 * a value, the second passes that value back and ends the run.
 * Prints PASS or FAIL per check; status 0 when all passed, else the failure count; 0x8e when
 * the #PF entry ran (nobody performed the SYSCALL).
 */
#include "exitscope.h"
#include "config.h"
#include "rt64.h"

EXITSCOPE_CONFIG("mode=long64 vcpus=1 irqchip=none memory=16")

#define MSR_LSTAR 0xC0000082
#define SYS_RETURN 1
#define SYS_EXIT   2

    .code64
    .section .text.start, "ax"
    .globl _start
_start:
    lea rt64_stack_top(%rip), %rsp
    call rt64_init
    xor %r15d, %r15d               /* failures */
    lea msg_start(%rip), %rdi
    call serial_puts
    lea syscall_fn(%rip), %rdi
    call rt64_set_syscall
    mov $14, %edi
    lea pf_entry(%rip), %rsi
    call rt64_set_gate
    /* LSTAR's 4 KiB page (in rt64's first 2 MiB of small pages) becomes supervisor-only. */
    mov $MSR_LSTAR, %ecx
    rdmsr
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, %rbx
    shr $12, %rax
    lea rt64_pt(%rip), %rdx
    andq $~4, (%rdx,%rax,8)
    invlpg (%rbx)
    lea user_code(%rip), %rdi
    lea user_stack_top(%rip), %rsi
    call enter_user

/* syscall_fn(nr, a1): at CPL0 from rt64's SYSCALL entry. */
syscall_fn:
    push %rbx
    mov %rdi, %rbx
    mov %rsi, %r13
    mov %cs, %eax
    test $3, %eax
    setz %r12b
    cmp $SYS_RETURN, %rbx
    jne 1f
    lea msg_first(%rip), %rdi
    call rt64_result
    mov $0x5E, %eax                /* returned to CPL3 in RAX */
    pop %rbx
    ret
1:  lea msg_second(%rip), %rdi
    call rt64_result
    cmp $0x5E, %r13                /* the first call's return value, passed back from CPL3 */
    sete %r12b
    lea msg_value(%rip), %rdi
    call rt64_result
    mov %r15, %rdi
    call guest_exit

/* #PF: reached only when the SYSCALL was not performed; CLAC first, as Linux's entry. */
pf_entry:
    clac
    lea msg_pf(%rip), %rdi
    call serial_puts
    mov 8(%rsp), %rdi
    call serial_puthex
    mov $'\n', %edi
    call serial_putc
    mov $0x8e, %edi
    call guest_exit


/* ---- ring 3, on a page of its own ---- */
    .balign 4096
user_code:
    mov $SYS_RETURN, %eax
    syscall
    mov %rax, %rdi
    mov $SYS_EXIT, %eax
    syscall
1:  jmp 1b
    .balign 4096

    .section .rodata
msg_start:  .asciz "user-syscall: SYSCALL from CPL3 into a supervisor-only LSTAR page\n"
msg_first:  .asciz "first SYSCALL at CPL0: "
msg_second: .asciz "second SYSCALL at CPL0 (after SYSRETQ): "
msg_value:  .asciz "value returned to CPL3 and passed back: "
msg_pf:     .asciz "user-syscall: #PF at "

    .bss
    .balign 4096
user_stack: .skip 4096
user_stack_top:
