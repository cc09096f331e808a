/*
 * long-mode: entered in 64-bit mode on the VMM's tables; installs its own GDT, IDT and
 * 4-level page tables (rt64), then: control-register reads and writes (CR0.WP, CR4.PGE,
 * CR3 reload), CPUID, WRMSR/RDMSR of the SYSCALL and GS MSRs, MMIO to the scratch device
 * through MOV, AND, OR, XCHG and MOVS, and a port-I/O loop of 64 OUTs.
 * Prints one line per check; status 0 through 0x501 when all held, else the failure count.
 */
#include "exitscope.h"
#include "config.h"

EXITSCOPE_CONFIG("mode=long64 vcpus=1 irqchip=none memory=16")

#define MSR_STAR           0xC0000081
#define MSR_LSTAR          0xC0000082
#define MSR_CSTAR          0xC0000083
#define MSR_SFMASK         0xC0000084
#define MSR_KERNEL_GS_BASE 0xC0000102
#define LOOP_ITERATIONS    64

    .code64
    .section .text.start, "ax"
    .globl _start
_start:
    lea rt64_stack_top(%rip), %rsp
    call rt64_init
    xor %r15d, %r15d               /* failed checks */
    lea msg_hello(%rip), %rdi
    call serial_puts

    /* Control registers. */
    mov %cr0, %rax
    mov %rax, %rbx
    btr $16, %rax                  /* CR0.WP off */
    mov %rax, %cr0
    mov %cr0, %rcx
    bt $16, %rcx
    adc $0, %r15
    mov %rbx, %cr0                 /* and back */
    mov %cr4, %rax
    mov %rax, %r12
    bts $7, %rax                   /* CR4.PGE on */
    mov %rax, %cr4
    mov %cr4, %rcx
    bt $7, %rcx
    cmc
    adc $0, %r15
    mov %r12, %cr4
    mov %cr3, %rax
    mov %rax, %cr3                 /* flush the TLB */
    lea rt64_pml4(%rip), %rcx
    cmp %rcx, %rax
    setne %al
    movzbl %al, %eax
    add %rax, %r15
    lea msg_cr(%rip), %rdi
    call serial_puts
    mov %rbx, %rdi
    call serial_puthex
    lea msg_cr4(%rip), %rdi
    call serial_puts
    mov %r12, %rdi
    call serial_puthex
    mov $10, %edi
    call serial_putc

    /* CPUID: leaf 0's vendor and maximum leaf, leaf 1 says long mode's companion bits. */
    xor %eax, %eax
    cpuid
    mov %ebx, vendor(%rip)
    mov %edx, vendor+4(%rip)
    mov %ecx, vendor+8(%rip)
    mov %eax, %r12d
    lea msg_cpuid(%rip), %rdi
    call serial_puts
    lea vendor(%rip), %rdi
    call serial_puts
    lea msg_maxleaf(%rip), %rdi
    call serial_puts
    mov %r12, %rdi
    call serial_puthex
    mov $10, %edi
    call serial_putc
    mov $0x80000001, %eax
    cpuid
    bt $29, %edx                   /* LM: we are running in it, so CPUID must say so */
    cmc
    adc $0, %r15

    /* MSRs: write each, read it back. */
    lea msr_list(%rip), %rbx
1:  mov (%rbx), %ecx
    test %ecx, %ecx
    jz 2f
    mov 8(%rbx), %rax
    mov %rax, %rdx
    shr $32, %rdx
    wrmsr
    xor %eax, %eax
    xor %edx, %edx
    rdmsr
    shl $32, %rdx
    or %rdx, %rax
    cmp 8(%rbx), %rax
    setne %al
    movzbl %al, %eax
    add %rax, %r15
    add $16, %rbx
    jmp 1b
2:  mov $MSR_STAR, %ecx            /* put rt64's SYSCALL setup back */
    xor %eax, %eax
    mov $0x00180008, %edx
    wrmsr
    lea msg_msr(%rip), %rdi
    call serial_puts

    /* MMIO through MOV, AND, OR, XCHG and MOVS. */
    mov $SCRATCH_MMIO_BASE, %rbx
    mov $0x1122334455667788, %rax
    mov %rax, (%rbx)               /* MOV store */
    mov (%rbx), %rcx               /* MOV load */
    cmp %rax, %rcx
    setne %al
    movzbl %al, %eax
    add %rax, %r15
    movl $0xF0F0F0F0, 8(%rbx)
    andl $0x0FF00FF0, 8(%rbx)      /* read-modify-write: 0x00F000F0 */
    orl $0x01000001, 8(%rbx)       /*                    0x01F000F1 */
    mov 8(%rbx), %eax
    cmp $0x01F000F1, %eax
    setne %al
    movzbl %al, %eax
    add %rax, %r15
    mov $0xCAFEF00D, %eax
    xchg %eax, 12(%rbx)            /* the old value comes back, the new one stays */
    mov 12(%rbx), %ecx
    cmp $0xCAFEF00D, %ecx
    setne %cl
    movzbl %cl, %ecx
    add %rcx, %r15
    lea pattern(%rip), %rsi        /* MOVS memory -> MMIO, then MMIO -> memory */
    lea 16(%rbx), %rdi
    mov $4, %ecx
    cld
    rep movsq
    lea 16(%rbx), %rsi
    lea copy(%rip), %rdi
    mov $4, %ecx
    rep movsq
    lea pattern(%rip), %rsi
    lea copy(%rip), %rdi
    mov $32, %ecx
    repe cmpsb
    setne %al
    movzbl %al, %eax
    add %rax, %r15
    lea msg_mmio(%rip), %rdi
    call serial_puts
    mov 8(%rbx), %edi
    call serial_puthex
    mov $' ', %edi
    call serial_putc
    mov 12(%rbx), %edi
    call serial_puthex
    mov $' ', %edi
    call serial_putc
    mov copy+24(%rip), %rdi
    call serial_puthex
    mov $10, %edi
    call serial_putc

    /* The port-I/O loop. */
    mov $LOOP_ITERATIONS, %ecx
    mov $COM1_SCR, %dx
3:  out %al, %dx
    dec %ecx
    jnz 3b
    lea msg_loop(%rip), %rdi
    call serial_puts

    test %r15, %r15
    jnz 4f
    lea msg_pass(%rip), %rdi
    call serial_puts
    xor %edi, %edi
    call guest_exit
4:  lea msg_fail(%rip), %rdi
    call serial_puts
    mov %r15, %rdi
    call guest_exit

    .section .rodata
msg_hello:   .asciz "long mode: own page tables\n"
msg_cr:      .asciz "cr: cr0 "
msg_cr4:     .asciz " cr4 "
msg_cpuid:   .asciz "cpuid: vendor "
msg_maxleaf: .asciz " max leaf "
msg_msr:     .asciz "msr: STAR LSTAR CSTAR SFMASK KERNEL_GS_BASE read back\n"
msg_mmio:    .asciz "mmio: and/or "
msg_loop:    .asciz "io loop: 64 outs\n"
msg_pass:    .asciz "long-mode: PASS\n"
msg_fail:    .asciz "long-mode: FAIL\n"
    .balign 8
msr_list:
    .quad MSR_STAR,           0x0023001000000000
    .quad MSR_LSTAR,          0xFFFFFFFF81000000
    .quad MSR_CSTAR,          0xFFFFFFFF81000040
    .quad MSR_SFMASK,         0x0000000000047700
    .quad MSR_KERNEL_GS_BASE, 0xFFFF888000001000
    .quad 0, 0
pattern:
    .quad 0x0101010101010101, 0x2323232323232323, 0x4545454545454545, 0x6767676767676767

    .bss
vendor: .skip 16
copy:   .skip 32
