/*
 * smp: the 2006 prototype's demo. Every CPU, the BSP at its real-mode entry and each AP at
 * the real-mode SIPI trampoline, switches itself straight to long mode (shared identity page
 * tables, 2 MiB pages). The BSP enables its local APIC and wakes every other vCPU with INIT
 * and SIPI (broadcast, all excluding self). Each CPU then programs its LAPIC timer (periodic,
 * vector 0x40), counts its own timer interrupts until TICKS, and reports under a spinlock:
 *   cpu N: 10 timer interrupts
 * The BSP waits until no new CPU has checked in for QUIET_TICKS of its own ticks, waits for
 * every report, prints "smp: K cpus" and ends with status 0 through 0x501.
 * irqchip=kernel, vcpus=2 (--vcpus overrides, up to MAX_CPUS). Long mode rather than 32-bit
 * protected mode because KVM's instruction emulator cannot run a 32-bit IRET at CPL0.
 */
#include "exitscope.h"
#include "config.h"

EXITSCOPE_CONFIG("mode=real vcpus=2 irqchip=kernel memory=16")

#define TICKS        10
#define QUIET_TICKS  50
#define TIMER_PERIOD 1000000            /* LAPIC timer counts, divide by 1: about 1 ms at KVM's 1 GHz */
#define TIMER_VECTOR 0x40
#define MAX_CPUS     16
#define STACK_SIZE   4096

#define LAPIC_ID     0x020
#define LAPIC_EOI    0x0B0
#define LAPIC_SVR    0x0F0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define LAPIC_LVT_TIMER  0x320
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_DIV  0x3E0
#define ICR_INIT_ALL_BUT_SELF 0x000C4500
#define ICR_SIPI_ALL_BUT_SELF 0x000C4600
#define LVT_PERIODIC (1 << 17)
#define LVT_MASKED   (1 << 16)

/* Real mode to long mode in one step: PAE, LME, then PE and PG together. */
.macro enter_long_mode target
    cli
    xor %ax, %ax
    mov %ax, %ds
    lgdtl gdt_ptr
    mov %cr4, %eax
    or $0x20, %eax                      /* CR4.PAE */
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx               /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax                /* CR0.PG | CR0.PE */
    mov %eax, %cr0
    ljmpl $0x08, $\target
.endm

    .code16
    .section .text.start, "ax"
    .globl _start
_start:                                 /* the BSP, CS=0 IP=0x1000 */
    enter_long_mode bsp64

    /* The AP trampoline: SIPI vector (trampoline >> 12), entered with CS = vector << 8, IP 0. */
    .balign 4096
trampoline:
    enter_long_mode ap64

    .code64
/* Segments, per-CPU stack by APIC ID (in ebx), IDT, LAPIC on (r15 = LAPIC base). */
.macro cpu_setup
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $LAPIC_BASE, %r15d
    mov LAPIC_ID(%r15), %ebx
    shr $24, %ebx
    and $(MAX_CPUS - 1), %ebx
    lea 1(%rbx), %esp
    shl $12, %esp                       /* (id + 1) * STACK_SIZE */
    add $stacks, %rsp
    lidt idt_ptr
    movl $0x1FF, LAPIC_SVR(%r15)        /* software enable, spurious vector 0xFF */
.endm

bsp64:
    cpu_setup
    call build_idt
    lock incl cpus_online
    mov $msg_boot, %esi
    call puts_locked
    movl $0, serial_lock
    /* INIT, then SIPI twice, to every other CPU. */
    movl $0, LAPIC_ICR_HI(%r15)
    movl $ICR_INIT_ALL_BUT_SELF, LAPIC_ICR_LO(%r15)
    call wait_icr
    mov $trampoline, %ecx
    shr $12, %ecx
    or $ICR_SIPI_ALL_BUT_SELF, %ecx
    mov %ecx, LAPIC_ICR_LO(%r15)
    call wait_icr
    mov %ecx, LAPIC_ICR_LO(%r15)
    call wait_icr
    call count_ticks
    /* Wait for QUIET_TICKS ticks without a new CPU checking in. */
    movl $(TIMER_VECTOR | LVT_PERIODIC), LAPIC_LVT_TIMER(%r15)
    movl $TIMER_PERIOD, LAPIC_TIMER_INIT(%r15)
1:  mov cpus_online, %edi
    mov ticks(,%rbx,4), %esi
    add $QUIET_TICKS, %esi
    sti
2:  hlt
    cmp cpus_online, %edi
    jne 1b
    cmp ticks(,%rbx,4), %esi
    ja 2b
    cli
    movl $LVT_MASKED, LAPIC_LVT_TIMER(%r15)
3:  mov cpus_reported, %eax             /* every CPU's report is out */
    cmp cpus_online, %eax
    jne 3b
    mov $msg_smp, %esi
    call puts_locked
    mov cpus_online, %eax
    call putdec
    mov $msg_cpus, %esi
    call puts
    movl $0, serial_lock
    xor %eax, %eax
    mov $EXIT_PORT, %dx
    out %al, %dx
4:  cli
    hlt
    jmp 4b

ap64:
    cpu_setup
    lock incl cpus_online
    call count_ticks
5:  cli
    hlt
    jmp 5b

/* count_ticks(ebx = APIC ID): periodic timer until TICKS interrupts, then report. */
count_ticks:
    movl $0xB, LAPIC_TIMER_DIV(%r15)    /* divide by 1 */
    movl $(TIMER_VECTOR | LVT_PERIODIC), LAPIC_LVT_TIMER(%r15)
    movl $TIMER_PERIOD, LAPIC_TIMER_INIT(%r15)
    sti
1:  hlt
    cmpl $TICKS, ticks(,%rbx,4)
    jb 1b
    cli
    movl $LVT_MASKED, LAPIC_LVT_TIMER(%r15)
    mov $msg_cpu, %esi
    call puts_locked
    mov %ebx, %eax
    call putdec
    mov $msg_colon, %esi
    call puts
    mov ticks(,%rbx,4), %eax
    call putdec
    mov $msg_ticks, %esi
    call puts
    movl $0, serial_lock
    lock incl cpus_reported
    ret

timer_interrupt:
    push %rax
    push %rdx
    mov $LAPIC_BASE, %edx
    mov LAPIC_ID(%rdx), %eax
    shr $24, %eax
    and $(MAX_CPUS - 1), %eax
    lock incl ticks(,%rax,4)
    movl $0, LAPIC_EOI(%rdx)
    pop %rdx
    pop %rax
    iretq

spurious_interrupt:
    iretq

wait_icr:
    push %rax
1:  mov LAPIC_ICR_LO(%r15), %eax
    test $(1 << 12), %eax               /* delivery status: pending */
    jnz 1b
    pop %rax
    ret

/* The IDT: the timer and the spurious vector; every other gate not present. */
build_idt:
    mov $timer_interrupt, %eax
    mov $(idt + TIMER_VECTOR * 16), %edi
    call set_gate
    mov $spurious_interrupt, %eax
    mov $(idt + 0xFF * 16), %edi
set_gate:
    mov %ax, (%rdi)
    movw $0x08, 2(%rdi)
    movw $0x8E00, 4(%rdi)               /* present, interrupt gate */
    shr $16, %eax
    mov %ax, 6(%rdi)
    movl $0, 8(%rdi)
    ret

/* puts_locked(esi): take the serial lock, then puts; the caller releases serial_lock. */
puts_locked:
    mov $1, %eax
1:  xchg %eax, serial_lock
    test %eax, %eax
    jz puts
    pause
    mov $1, %eax
    jmp 1b

/* puts(esi) with THRE polling. */
puts:
    push %rax
    push %rdx
1:  lodsb
    test %al, %al
    jz 3f
    mov %al, %ah
    mov $COM1_LSR, %dx
2:  in %dx, %al
    test $LSR_THRE, %al
    jz 2b
    mov %ah, %al
    mov $COM1, %dx
    out %al, %dx
    jmp 1b
3:  pop %rdx
    pop %rax
    ret

/* putdec(eax): per-CPU buffer on the stack. */
putdec:
    push %rcx
    push %rdx
    push %rsi
    sub $16, %rsp
    lea 15(%rsp), %rsi
    movb $0, (%rsi)
    mov $10, %ecx
1:  xor %edx, %edx
    div %ecx
    add $'0', %dl
    dec %rsi
    mov %dl, (%rsi)
    test %eax, %eax
    jnz 1b
    call puts
    add $16, %rsp
    pop %rsi
    pop %rdx
    pop %rcx
    ret

    .section .rodata
msg_boot:  .asciz "smp: BSP up, sending INIT/SIPI\n"
msg_cpu:   .asciz "cpu "
msg_colon: .asciz ": "
msg_ticks: .asciz " timer interrupts\n"
msg_smp:   .asciz "smp: "
msg_cpus:  .asciz " cpus\n"

    .data
    .balign 8
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF            /* 0x08 code, 64-bit */
    .quad 0x00CF92000000FFFF            /* 0x10 data */
gdt_ptr:
    .word gdt_ptr - gdt - 1
    .long gdt
    .balign 8
idt_ptr:
    .word 256 * 16 - 1
    .quad idt
serial_lock:   .long 0
cpus_online:   .long 0
cpus_reported: .long 0

    /* Identity page tables: 0-1 GiB (RAM) and 3-4 GiB (the LAPIC), 2 MiB pages. */
    .balign 4096
pml4:
    .quad pdpt + 3
    .fill 511, 8, 0
pdpt:
    .quad pd_low + 3
    .quad 0, 0
    .quad pd_high + 3
    .fill 508, 8, 0
pd_low:
    .set i, 0
    .rept 512
    .quad (i << 21) | 0x83
    .set i, i + 1
    .endr
pd_high:
    .set i, 0
    .rept 512
    .quad (0xC0000000 + (i << 21)) | 0x9B   /* present, writable, PWT, PCD, PS */
    .set i, i + 1
    .endr

    .bss
    .balign 16
idt:    .skip 256 * 16
ticks:  .skip MAX_CPUS * 4
    .balign 4096
stacks: .skip (MAX_CPUS + 1) * STACK_SIZE
