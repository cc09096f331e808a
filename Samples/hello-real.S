/* hello-real: real mode, prints a line on COM1 with a polling driver, then HLT. */
#include "exitscope.h"
#include "config.h"

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
1:  lodsb
    test %al, %al
    jz 3f
    mov %al, %bl
    mov $COM1_LSR, %dx
2:  in %dx, %al                 /* wait for THRE */
    test $LSR_THRE, %al
    jz 2b
    mov %bl, %al
    mov $COM1, %dx
    out %al, %dx
    jmp 1b
3:  hlt                         /* irqchip=none: the VMM sees the HLT and ends the run (status 0) */
    jmp 3b

message: .asciz "Hello from real mode\n"
