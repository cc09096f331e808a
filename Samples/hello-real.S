/* hello-real: real mode, prints a line on COM1 with a polling driver, then HLT. */
#include "exitscope.h"
#include "config.h"
#include "serial_puts.inc"

EXITSCOPE_CONFIG("mode=real vcpus=1 irqchip=none memory=16")

    .code16
    .section .text.start, "ax"
    .globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x1000, %sp
    mov $message, %si
    SERIAL_PUTS
3:  hlt                         /* irqchip=none: the VMM sees the HLT and ends the run (status 0) */
    jmp 3b

message: .asciz "Hello from real mode\n"
