/* hostile-spin: prints one line, then loops forever without a single exit. Only --timeout
   (or Ctrl-C) ends the run: the VMM must kick the vCPU out of KVM_RUN and report. */
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
    mov $message, %si
1:  lodsb
    test %al, %al
    jz 3f
    mov %al, %bl
    mov $COM1_LSR, %dx
2:  in %dx, %al
    test $LSR_THRE, %al
    jz 2b
    mov %bl, %al
    mov $COM1, %dx
    out %al, %dx
    jmp 1b
3:  jmp 3b                      /* no exit ever again */

message: .asciz "hostile-spin: spinning with no exits\n"
