/*
 * rt64: the small 64-bit runtime the long-mode samples link with.
 * The VMM enters them in long mode on its own GDT and identity page tables; rt64_init
 * then gives the guest its own: a GDT with ring-3 segments and a TSS, 4-level identity
 * page tables for the first 4 GiB (4 KiB pages for the first 2 MiB, so single pages
 * can be unmapped and modified; 2 MiB pages above; everything user-accessible),
 * an IDT for the 32 exception vectors, and SYSCALL/SYSRET.
 *
 * Calls follow the SysV ABI (arguments in rdi, rsi, rdx; rbx, rbp, r12-r15 preserved).
 */
#include "exitscope.h"
#include "rt64.h"

#define MSR_EFER    0xC0000080
#define MSR_STAR    0xC0000081
#define MSR_LSTAR   0xC0000082
#define MSR_SFMASK  0xC0000084

    .code64
    .text

/* rt64_init(): own GDT, TSS, page tables, IDT, SYSCALL. Keeps the caller's stack. */
    .globl rt64_init
rt64_init:
    push %rbx
    /* TSS descriptor (64-bit available TSS, 16 bytes) at GDT[6]. */
    lea rt64_tss(%rip), %rax
    mov %rax, %rbx
    mov $(104 + 8192), %rcx        /* limit: the TSS and its I/O permission bitmap */
    mov %cx, gdt_tss+0(%rip)
    mov %ax, gdt_tss+2(%rip)
    shr $16, %rax
    mov %al, gdt_tss+4(%rip)
    movb $0x89, gdt_tss+5(%rip)    /* present, type 9 */
    movb $0, gdt_tss+6(%rip)
    mov %ah, gdt_tss+7(%rip)
    shr $16, %rax
    mov %eax, gdt_tss+8(%rip)
    movl $0, gdt_tss+12(%rip)
    lea rt64_kernel_stack_top(%rip), %rax
    mov %rax, 4(%rbx)              /* TSS.RSP0: the stack ring-3 interrupts switch to */
    movw $104, 102(%rbx)           /* I/O map base: the bitmap right after the TSS, all zeros:
                                      ring 3 may use every port (some backends ignore IOPL) */
    movb $0xFF, 104 + 8192(%rbx)

    lgdt gdt_ptr(%rip)
    mov $KERNEL_DS, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    lea 1f(%rip), %rax
    pushq $KERNEL_CS
    push %rax
    lretq
1:  mov $TSS_SEL, %ax
    ltr %ax

    call rt64_build_page_tables
    lea rt64_pml4(%rip), %rax
    mov %rax, %cr3

    call rt64_build_idt
    lidt idt_ptr(%rip)

    /* SYSCALL: kernel CS 0x08/SS 0x10; SYSRET: CS 0x2B, SS 0x23. */
    mov $MSR_EFER, %ecx
    rdmsr
    or $1, %eax                    /* EFER.SCE */
    wrmsr
    mov $MSR_STAR, %ecx
    xor %eax, %eax
    mov $((USER_CS32 << 16) | KERNEL_CS), %edx
    wrmsr
    mov $MSR_LSTAR, %ecx
    lea rt64_syscall_entry(%rip), %rax
    mov %rax, %rdx
    shr $32, %rdx
    wrmsr
    mov $MSR_SFMASK, %ecx
    mov $0x200, %eax               /* clear IF on entry */
    xor %edx, %edx
    wrmsr
    pop %rbx
    ret

/* Identity map of 0..4 GiB: PML4[0] -> PDPT; PDPT[i] -> PD[i]; PD[0][0] -> PT (4 KiB pages). */
rt64_build_page_tables:
    lea rt64_pdpt(%rip), %rax
    or $7, %rax                    /* present, writable, user */
    mov %rax, rt64_pml4(%rip)
    lea rt64_pd(%rip), %rdi
    lea rt64_pdpt(%rip), %rsi
    xor %ecx, %ecx
1:  mov %rcx, %rax
    shl $12, %rax
    add %rdi, %rax
    or $7, %rax
    mov %rax, (%rsi,%rcx,8)
    inc %ecx
    cmp $4, %ecx
    jne 1b
    /* 2048 PD entries of 2 MiB pages. */
    xor %ecx, %ecx
2:  mov %rcx, %rax
    shl $21, %rax
    or $0x87, %rax                 /* present, writable, user, PS */
    mov %rax, (%rdi,%rcx,8)
    inc %ecx
    cmp $2048, %ecx
    jne 2b
    /* The first 2 MiB in 4 KiB pages; page 0 left unmapped to catch null pointers. */
    lea rt64_pt(%rip), %rsi
    mov %rsi, %rax
    or $7, %rax
    mov %rax, (%rdi)
    mov $1, %ecx
3:  mov %rcx, %rax
    shl $12, %rax
    or $7, %rax
    mov %rax, (%rsi,%rcx,8)
    inc %ecx
    cmp $512, %ecx
    jne 3b
    ret

/* rt64_pte(addr) -> address of the 4 KiB PTE mapping addr (addr below 2 MiB). */
    .globl rt64_pte
rt64_pte:
    mov %rdi, %rax
    shr $12, %rax
    and $511, %eax
    lea rt64_pt(%rip), %rdx
    lea (%rdx,%rax,8), %rax
    ret

rt64_build_idt:
    lea rt64_idt(%rip), %rdi
    lea exception_stubs(%rip), %rsi
    xor %ecx, %ecx
1:  mov %rcx, %rax
    shl $4, %rax                   /* stub size is 16 bytes */
    add %rsi, %rax
    mov %ax, (%rdi)                /* offset 15:0 */
    movw $KERNEL_CS, 2(%rdi)
    movw $0xEE00, 4(%rdi)          /* present, DPL3 (int3/int from ring 3 allowed), interrupt gate */
    shr $16, %rax
    mov %ax, 6(%rdi)
    shr $16, %rax
    mov %eax, 8(%rdi)
    movl $0, 12(%rdi)
    add $16, %rdi
    inc %ecx
    cmp $32, %ecx
    jne 1b
    ret

/* rt64_set_gate(vector, entry): a raw interrupt gate (DPL3, so `int N` works from ring 3)
   to an assembly entry point that ends with IRETQ itself. */
    .globl rt64_set_gate
rt64_set_gate:
    shl $4, %rdi
    lea rt64_idt(%rip), %rax
    add %rax, %rdi
    mov %rsi, %rax
    mov %ax, (%rdi)
    movw $KERNEL_CS, 2(%rdi)
    movw $0xEE00, 4(%rdi)
    shr $16, %rax
    mov %ax, 6(%rdi)
    shr $16, %rax
    mov %eax, 8(%rdi)
    movl $0, 12(%rdi)
    ret

/* rt64_set_handler(vector, fn): fn(frame*) handles the exception; it may change frame->rip. */
    .globl rt64_set_handler
rt64_set_handler:
    lea rt64_handlers(%rip), %rax
    mov %rsi, (%rax,%rdi,8)
    ret

/* rt64_set_syscall(fn): fn(nr, a1, a2) -> rax, called for each SYSCALL (nr in rax). */
    .globl rt64_set_syscall
rt64_set_syscall:
    mov %rdi, rt64_syscall_fn(%rip)
    ret

/* Each stub is 16 bytes: push a zero error code where the CPU pushes none, push the vector. */
    .balign 16
exception_stubs:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .balign 16
    .if (\v == 8) || (\v == 10) || (\v == 11) || (\v == 12) || (\v == 13) || (\v == 14) || (\v == 17) || (\v == 21) || (\v == 29) || (\v == 30)
    .else
    pushq $0
    .endif
    pushq $\v
    jmp exception_common
    .endr

/* Frame layout (rsp at the call): include/rt64.h. */
exception_common:
    push %r15
    push %r14
    push %r13
    push %r12
    push %r11
    push %r10
    push %r9
    push %r8
    push %rbp
    push %rdi
    push %rsi
    push %rdx
    push %rcx
    push %rbx
    push %rax
    mov %rsp, %rdi
    mov FRAME_VECTOR(%rsp), %rax
    lea rt64_handlers(%rip), %rdx
    mov (%rdx,%rax,8), %rax
    test %rax, %rax
    jz unexpected_exception
    mov %rsp, %rbx
    and $-16, %rsp
    call *%rax
    mov %rbx, %rsp
    pop %rax
    pop %rbx
    pop %rcx
    pop %rdx
    pop %rsi
    pop %rdi
    pop %rbp
    pop %r8
    pop %r9
    pop %r10
    pop %r11
    pop %r12
    pop %r13
    pop %r14
    pop %r15
    add $16, %rsp
    iretq

/* No handler: say which exception, where, and end the run with status 0x80 + vector. */
unexpected_exception:
    mov %rsp, %rbx
    lea msg_exception(%rip), %rdi
    call serial_puts
    mov FRAME_VECTOR(%rbx), %rdi
    call serial_putdec
    lea msg_at(%rip), %rdi
    call serial_puts
    mov FRAME_RIP(%rbx), %rdi
    call serial_puthex
    lea msg_error(%rip), %rdi
    call serial_puts
    mov FRAME_ERROR(%rbx), %rdi
    call serial_puthex
    lea msg_cs(%rip), %rdi
    call serial_puts
    mov FRAME_CS(%rbx), %rdi
    call serial_puthex
    lea msg_rflags(%rip), %rdi
    call serial_puts
    mov FRAME_RFLAGS(%rbx), %rdi
    call serial_puthex
    mov $10, %edi
    call serial_putc
    mov FRAME_VECTOR(%rbx), %rdi
    add $0x80, %edi
    jmp guest_exit

/* SYSCALL entry: rcx = user rip, r11 = user rflags. Runs on the kernel stack. */
rt64_syscall_entry:
    mov %rsp, rt64_user_rsp(%rip)
    lea rt64_kernel_stack_top(%rip), %rsp
    push rt64_user_rsp(%rip)
    push %rcx
    push %r11
    mov %rdx, %rcx
    mov %rsi, %rdx
    mov %rdi, %rsi
    mov %rax, %rdi
    mov rt64_syscall_fn(%rip), %rax
    test %rax, %rax
    jz 1f
    call *%rax
1:  pop %r11
    pop %rcx
    pop %rsp
    sysretq

/* enter_user(rip, rsp): iretq to ring 3 with IOPL=3 and interrupts off. */
    .globl enter_user
enter_user:
    pushq $(USER_DS | 3)
    push %rsi
    pushq $0x3002                  /* IOPL=3, IF=0 */
    pushq $(USER_CS | 3)
    push %rdi
    mov $(USER_DS | 3), %ax
    mov %ax, %ds
    mov %ax, %es
    iretq

/* serial_putc(c): poll THRE, then write. */
    .globl serial_putc
serial_putc:
    mov $COM1_LSR, %dx
1:  in %dx, %al
    test $LSR_THRE, %al
    jz 1b
    mov %dil, %al
    mov $COM1, %dx
    out %al, %dx
    ret

/* rt64_result(label): print the label, then PASS if r12b is set, else FAIL and count it in r15
   (the samples' check convention). */
    .globl rt64_result
rt64_result:
    call serial_puts
    lea rt64_msg_pass(%rip), %rdi
    test %r12b, %r12b
    jnz 1f
    inc %r15
    lea rt64_msg_fail(%rip), %rdi
1:  jmp serial_puts

/* serial_puts(zero-terminated string). */
    .globl serial_puts
serial_puts:
    push %rbx
    mov %rdi, %rbx
1:  movzbl (%rbx), %edi
    test %edi, %edi
    jz 2f
    call serial_putc
    inc %rbx
    jmp 1b
2:  pop %rbx
    ret

/* serial_puthex(value): "0x" and 16 hex digits would be noisy; print without leading zeros. */
    .globl serial_puthex
serial_puthex:
    push %rbx
    push %r12
    push %r13
    mov %rdi, %rbx
    mov $'0', %edi
    call serial_putc
    mov $'x', %edi
    call serial_putc
    mov $60, %r12d
    xor %r13d, %r13d               /* printed a digit yet */
1:  mov %rbx, %rax
    mov %r12d, %ecx
    shr %cl, %rax
    and $15, %eax
    test %r12d, %r12d
    jz 2f                          /* always print the last digit */
    or %eax, %r13d
    jz 3f
2:  lea hexdigits(%rip), %rdx
    movzbl (%rdx,%rax), %edi
    call serial_putc
    mov $1, %r13d
3:  sub $4, %r12d
    jns 1b
    pop %r13
    pop %r12
    pop %rbx
    ret

/* serial_putdec(value): unsigned decimal. */
    .globl serial_putdec
serial_putdec:
    push %rbx
    sub $32, %rsp
    lea 31(%rsp), %rbx
    movb $0, (%rbx)
    mov %rdi, %rax
    mov $10, %ecx
1:  xor %edx, %edx
    div %rcx
    add $'0', %dl
    dec %rbx
    mov %dl, (%rbx)
    test %rax, %rax
    jnz 1b
    mov %rbx, %rdi
    call serial_puts
    add $32, %rsp
    pop %rbx
    ret

/* guest_exit(status): the run's exit status through the exit port; never returns. */
    .globl guest_exit
guest_exit:
    mov %edi, %eax
    mov $EXIT_PORT, %dx
    out %eax, %dx
1:  cli
    hlt
    jmp 1b

    .section .rodata
hexdigits:      .ascii "0123456789abcdef"
msg_exception:  .asciz "unexpected exception "
msg_at:         .asciz " at rip "
msg_error:      .asciz " error "
msg_cs:         .asciz " cs "
msg_rflags:     .asciz " rflags "
rt64_msg_pass:  .asciz "PASS\n"
rt64_msg_fail:  .asciz "FAIL\n"

    .data
    .balign 16
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF       /* 0x08 kernel code, 64-bit */
    .quad 0x00CF92000000FFFF       /* 0x10 kernel data */
    .quad 0x00CFFA000000FFFF       /* 0x18 user code, 32-bit (SYSRET's base) */
    .quad 0x00CFF2000000FFFF       /* 0x20 user data */
    .quad 0x00AFFA000000FFFF       /* 0x28 user code, 64-bit */
gdt_tss:
    .quad 0, 0                     /* 0x30 TSS, filled in by rt64_init */
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt
    .balign 16
idt_ptr:
    .word 256 * 16 - 1
    .quad rt64_idt
rt64_syscall_fn: .quad 0
rt64_user_rsp:   .quad 0

    .bss
    .balign 4096
    .globl rt64_pml4, rt64_pdpt, rt64_pd, rt64_pt
rt64_pml4:  .skip 4096
rt64_pdpt:  .skip 4096
rt64_pd:    .skip 4 * 4096
rt64_pt:    .skip 4096
rt64_idt:   .skip 256 * 16
rt64_handlers: .skip 32 * 8
    .balign 16
rt64_tss:   .skip 104
rt64_iomap: .skip 8192 + 1          /* the last byte is the bitmap's 0xFF terminator */
    .balign 16
            .skip 8192
rt64_kernel_stack_top:
    .globl rt64_stack_top
    .balign 16
            .skip 16384
rt64_stack_top:
