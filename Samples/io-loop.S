/*
 * io-loop: the exit-heavy workload. ITERATIONS (build-time, see the Makefile) writes to the
 * UART's scratch register, one exit each, three instructions per iteration; then a line on
 * COM1 and status 0 through the exit port.
 */
#include "exitscope.h"
#include "config.h"
#include "serial_puts.inc"

#ifndef ITERATIONS
#define ITERATIONS 100000
#endif

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
    mov $ITERATIONS, %ecx
    mov $COM1_SCR, %dx
    .globl io_loop
io_loop:
    out %al, %dx
    dec %ecx
    jnz io_loop

    mov $message, %si
    SERIAL_PUTS
3:  xor %ax, %ax
    mov $EXIT_PORT, %dx
    out %al, %dx
4:  hlt
    jmp 4b

message: .asciz "io-loop done\n"
