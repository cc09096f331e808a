/* hostile-spin: prints one line, then loops forever without a single exit. Only --timeout
   (or Ctrl-C) ends the run: the VMM must kick the vCPU out of KVM_RUN and report. */
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
    mov $message, %si
    SERIAL_PUTS
3:  jmp 3b                      /* no exit ever again */

message: .asciz "hostile-spin: spinning with no exits\n"
