/*
 * completion: instructions KVM's instruction emulator lacks at CPL0 on kvm_pvm (issue 9):
 * LOCK CMPXCHG16B (a success and a failure), MOVBE load and store, and INT n in long mode.
 * Each is checked and prints PASS or FAIL (SKIP when CPUID does not offer it); status 0
 * when all passed, else the failure count.
 * Until the VMM completes these itself, the run ends at the first one with an
 * emulation-failure report.
 */
#include "exitscope.h"
#include "config.h"
#include "rt64.h"

EXITSCOPE_CONFIG("mode=long64 vcpus=1 irqchip=none memory=16")

.macro check label
    lea \label(%rip), %rdi
    call rt64_result
.endm

    .code64
    .section .text.start, "ax"
    .globl _start
_start:
    lea rt64_stack_top(%rip), %rsp
    call rt64_init
    mov $0x80, %edi
    lea int80_entry(%rip), %rsi
    call rt64_set_gate
    xor %r15d, %r15d               /* failures */
    lea msg_start(%rip), %rdi
    call serial_puts

    mov $1, %eax
    cpuid
    mov %ecx, %r14d                /* CPUID.1:ECX: CX16 bit 13, MOVBE bit 22 */
    bt $13, %r14d
    jc 1f
    lea msg_no_cx16(%rip), %rdi
    call serial_puts
    jmp 2f
1:
    /* CMPXCHG16B, equal: the new value is stored, ZF=1. */
    mov $0x1111111111111111, %rax
    mov %rax, cell(%rip)
    mov $0x2222222222222222, %rdx
    mov %rdx, cell+8(%rip)
    mov $0x3333333333333333, %rbx
    mov $0x4444444444444444, %rcx
    .globl cmpxchg16b_equal
cmpxchg16b_equal:
    lock cmpxchg16b cell(%rip)
    setz %r12b
    mov $0x3333333333333333, %rax
    cmp %rax, cell(%rip)
    sete %al
    and %al, %r12b
    mov $0x4444444444444444, %rax
    cmp %rax, cell+8(%rip)
    sete %al
    and %al, %r12b
    check msg_cx16_equal

    /* CMPXCHG16B, different: memory goes to RDX:RAX, ZF=0. */
    xor %eax, %eax
    xor %edx, %edx
    lock cmpxchg16b cell(%rip)
    setnz %r12b
    mov $0x3333333333333333, %rbx
    cmp %rbx, %rax
    sete %bl
    and %bl, %r12b
    mov $0x4444444444444444, %rbx
    cmp %rbx, %rdx
    sete %bl
    and %bl, %r12b
    check msg_cx16_differ
2:  bt $22, %r14d
    jc 3f
    lea msg_no_movbe(%rip), %rdi
    call serial_puts
    jmp 4f
3:
    /* MOVBE load and store. */
    movq $0x0102030405060708, %rax
    mov %rax, cell(%rip)
    .globl movbe_load
movbe_load:
    movbe cell(%rip), %rcx
    mov $0x0807060504030201, %rax
    cmp %rax, %rcx
    sete %r12b
    check msg_movbe_load
    mov $0xAABBCCDD, %ecx
    movbe %ecx, cell(%rip)
    cmpl $0xDDCCBBAA, cell(%rip)
    sete %r12b
    check msg_movbe_store
4:
    /* INT n at CPL0 in long mode. */
    xor %eax, %eax
    int $0x80
    cmp $0x80, %eax
    sete %r12b
    check msg_int

    mov %r15, %rdi
    call guest_exit

int80_entry:
    mov $0x80, %eax
    iretq


    .section .rodata
msg_start:       .asciz "completion: lock cmpxchg16b, movbe, int n at CPL0\n"
msg_cx16_equal:  .asciz "lock cmpxchg16b (equal): "
msg_cx16_differ: .asciz "lock cmpxchg16b (different): "
msg_movbe_load:  .asciz "movbe load: "
msg_movbe_store: .asciz "movbe store: "
msg_int:         .asciz "int 0x80: "
msg_no_cx16:     .asciz "lock cmpxchg16b: SKIP (CPUID has no CX16)\n"
msg_no_movbe:    .asciz "movbe: SKIP (CPUID has no MOVBE)\n"

    .data
    .balign 16
cell: .quad 0, 0
