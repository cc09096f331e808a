/* hostile-triple-fault: long mode on the VMM's tables; loads an empty IDT and executes UD2:
   #UD cannot be delivered, nor can the #DF that follows: a triple fault (SHUTDOWN). */
#include "exitscope.h"
#include "config.h"
#include "serial_puts.inc"

EXITSCOPE_CONFIG("mode=long64 vcpus=1 irqchip=none memory=16")

    .code64
    .section .text.start, "ax"
    .globl _start
_start:
    lea message(%rip), %rsi
    SERIAL_PUTS
3:  lidt empty_idt(%rip)
    .globl fault_here
fault_here:
    ud2
    mov $0x7F, %al              /* not reached: would end with status 127 */
    mov $EXIT_PORT, %dx
    out %al, %dx
    hlt

message: .asciz "hostile-triple-fault: UD2 with an empty IDT\n"
    .balign 8
empty_idt:
    .word 0
    .quad 0
