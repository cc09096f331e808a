/*
 * ring3: a ring-3 workload. The kernel (rt64) drops to CPL3 with IOPL=3 requested and a TSS
 * I/O permission bitmap that allows every port; the user code then does port I/O itself
 * (a polling UART driver and a loop of 32 OUTs) and makes system calls with INT 0x80
 * (write, getpid) and finally SYSCALL (exit). Where the backend turns INT n from ring 3 into
 * #UD, the kernel's #UD handler performs the INT (README.md, "What this host does").
 * Ends with status 0 through the exit system call; 3 when SYSCALL did not enter CPL0.
 */
#include "exitscope.h"
#include "config.h"
#include "rt64.h"

EXITSCOPE_CONFIG("mode=long64 vcpus=1 irqchip=none memory=16")

#define SYS_WRITE  1
#define SYS_GETPID 39
#define SYS_EXIT   60
#define USER_LOOP  32

    .code64
    .section .text.start, "ax"
    .globl _start
_start:
    lea rt64_stack_top(%rip), %rsp
    call rt64_init
    mov $0x80, %edi
    lea int80_entry(%rip), %rsi
    call rt64_set_gate
    mov $6, %edi
    lea ud_handler(%rip), %rsi
    call rt64_set_handler
    lea syscall_handler(%rip), %rdi
    call rt64_set_syscall
    lea msg_kernel(%rip), %rdi
    call serial_puts
    lea user_main(%rip), %rdi
    lea user_stack_top(%rip), %rsi
    call enter_user

/* ---- ring 3 ---- */
user_main:
    /* Port I/O from CPL3: the polling driver. */
    lea umsg_hello(%rip), %rsi
    call user_puts
    pushfq
    pop %rbx
    shr $12, %rbx
    and $3, %ebx
    lea umsg_iopl(%rip), %rsi
    call user_puts
    lea '0'(%rbx), %eax
    call user_putc
    mov $'\n', %al
    call user_putc
    mov %cs, %ebx
    and $3, %ebx
    lea umsg_cpl(%rip), %rsi
    call user_puts
    lea '0'(%rbx), %eax
    call user_putc
    mov $'\n', %al
    call user_putc

    mov $USER_LOOP, %ecx
    mov $COM1_SCR, %dx
1:  out %al, %dx
    dec %ecx
    jnz 1b
    lea umsg_loop(%rip), %rsi
    call user_puts

    /* System calls through INT 0x80. */
    mov $SYS_WRITE, %eax
    lea umsg_write(%rip), %rdi
    mov $umsg_write_len, %esi
    int $0x80
    mov $SYS_GETPID, %eax
    int $0x80
    mov %eax, %ebx
    lea umsg_getpid(%rip), %rsi
    call user_puts
    lea '0'(%rbx), %eax
    call user_putc
    mov $'\n', %al
    call user_putc

    /* Exit through SYSCALL. */
    mov $SYS_EXIT, %eax
    xor %edi, %edi
    syscall
    ud2

/* user_putc(al) and user_puts(rsi): the ring-3 UART driver. */
user_putc:
    mov %al, %ah
    mov $COM1_LSR, %dx
1:  in %dx, %al
    test $LSR_THRE, %al
    jz 1b
    mov %ah, %al
    mov $COM1, %dx
    out %al, %dx
    ret
user_puts:
1:  lodsb
    test %al, %al
    jz 2f
    call user_putc
    jmp 1b
2:  ret

/* ---- the kernel ---- */
/* int 0x80: rax = number; SYS_WRITE(rdi = buffer, rsi = length), SYS_GETPID. */
int80_entry:
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    call int80_dispatch
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    iretq

int80_dispatch:
    incq int80_calls(%rip)
    cmp $SYS_WRITE, %eax
    jne 2f
    push %rbx
    push %r12
    mov %rdi, %rbx
    mov %rsi, %r12
1:  test %r12, %r12
    jz 3f
    movzbl (%rbx), %edi
    call serial_putc
    inc %rbx
    dec %r12
    jmp 1b
3:  pop %r12
    pop %rbx
    xor %eax, %eax
    ret
2:  cmp $SYS_GETPID, %eax
    jne 4f
    mov $7, %eax
    ret
4:  mov $-1, %rax
    ret

/* #UD at an INT 0x80 from ring 3: perform it as the gate would have. */
ud_handler:
    push %rbx
    mov %rdi, %rbx
    mov FRAME_RIP(%rbx), %rax
    cmpw $0x80CD, (%rax)
    jne 1f
    incq int_via_ud(%rip)
    addq $2, FRAME_RIP(%rbx)
    mov FRAME_RAX(%rbx), %rax
    mov FRAME_RDI(%rbx), %rdi
    mov FRAME_RSI(%rbx), %rsi
    call int80_dispatch
    mov %rax, FRAME_RAX(%rbx)
    pop %rbx
    ret
1:  lea msg_ud(%rip), %rdi
    call serial_puts
    mov $0x86, %edi
    call guest_exit

/* SYSCALL: only SYS_EXIT; checks that it really runs at CPL0. */
syscall_handler:
    mov %rsi, %r12                 /* exit status (rt64 passes nr, rdi, rsi as rdi, rsi, rdx) */
    mov %cs, %ebx
    test $3, %ebx
    jnz 1f
    lea msg_syscall_ok(%rip), %rdi
    call serial_puts
    call report_calls
    mov %r12, %rdi
    call guest_exit
1:  lea msg_syscall_cpl3(%rip), %rdi
    call serial_puts
    mov %rbx, %rdi
    call serial_puthex
    mov $'\n', %edi
    call serial_putc
    call report_calls
    mov $3, %edi
    call guest_exit

report_calls:
    lea msg_calls(%rip), %rdi
    call serial_puts
    mov int80_calls(%rip), %rdi
    call serial_putdec
    lea msg_via_ud(%rip), %rdi
    call serial_puts
    mov int_via_ud(%rip), %rdi
    call serial_putdec
    mov $'\n', %edi
    jmp serial_putc

    .section .rodata
msg_kernel:       .asciz "ring3: kernel ready, entering CPL3\n"
umsg_hello:       .asciz "ring3: hello from CPL3 through port I/O\n"
umsg_iopl:        .asciz "ring3: RFLAGS.IOPL seen at CPL3: "
umsg_cpl:         .asciz "ring3: CPL "
umsg_loop:        .asciz "ring3: 32 OUTs from CPL3\n"
umsg_write:       .ascii "ring3: hello through INT 0x80 write\n"
    .set umsg_write_len, . - umsg_write
umsg_getpid:      .asciz "ring3: INT 0x80 getpid = "
msg_syscall_ok:   .asciz "ring3: SYSCALL exit at CPL0\n"
msg_syscall_cpl3: .asciz "ring3: SYSCALL reached LSTAR without entering CPL0, cs "
msg_calls:        .asciz "ring3: INT 0x80 calls "
msg_via_ud:       .asciz ", performed from #UD "
msg_ud:           .asciz "unexpected #UD\n"

    .data
int80_calls: .quad 0
int_via_ud:  .quad 0

    .bss
    .balign 16
    .skip 4096
user_stack_top:
