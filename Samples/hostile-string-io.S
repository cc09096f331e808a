/*
 * hostile-string-io: string I/O whose buffer runs off the end of guest memory (16 MiB; the
 * page tables map on past it). REP OUTSB of 32 bytes from 16 bytes before the end, REP INSB
 * and REP INSW of 32 bytes/words into the last 16 bytes and beyond. Whatever lies past RAM
 * is nobody's: reads give all ones, writes are dropped. Then the guest checks that RAM is
 * still what it wrote and ends with status 0 through 0x501.
 */
#include "exitscope.h"
#include "config.h"
#include "rt64.h"

EXITSCOPE_CONFIG("mode=long64 vcpus=1 irqchip=none memory=16")

#define RAM_END (16 << 20)

    .code64
    .section .text.start, "ax"
    .globl _start
_start:
    lea rt64_stack_top(%rip), %rsp
    call rt64_init
    cld
    mov $RAM_END - 16, %edi        /* the last 16 bytes of RAM: 'A'..'P' */
    mov $'A', %al
    mov $16, %ecx
1:  stosb
    inc %al
    loop 1b

    lea msg_outsb(%rip), %rdi
    call serial_puts
    mov $RAM_END - 16, %esi
    mov $32, %ecx
    mov $COM1_SCR, %dx
    rep outsb

    lea msg_insb(%rip), %rdi
    call serial_puts
    mov $COM1_SCR, %dx
    mov $0x5A, %al
    out %al, %dx
    mov $RAM_END - 8, %edi
    mov $32, %ecx
    rep insb

    lea msg_insw(%rip), %rdi
    call serial_puts
    mov $UNCLAIMED_PORT, %dx
    mov $RAM_END - 4, %edi
    mov $32, %ecx
    rep insw

    /* RAM below the end: 'A'..'H', then 0x5A 0x5A 0x5A 0x5A, then all ones. */
    xor %ebx, %ebx
    mov $RAM_END - 16, %esi
    mov $'A', %ah
    mov $8, %ecx
2:  lodsb
    cmp %ah, %al
    setne %dl
    or %dl, %bl
    inc %ah
    loop 2b
    mov $4, %ecx
3:  lodsb
    cmp $0x5A, %al
    setne %dl
    or %dl, %bl
    loop 3b
    mov (%rsi), %eax
    cmp $0xFFFFFFFF, %eax
    setne %dl
    or %dl, %bl
    lea msg_pass(%rip), %rdi
    test %bl, %bl
    jz 4f
    lea msg_fail(%rip), %rdi
4:  call serial_puts
    movzbl %bl, %edi
    call guest_exit

    .section .rodata
msg_outsb: .asciz "hostile-string-io: rep outsb of 32 bytes from 16 before the end of RAM\n"
msg_insb:  .asciz "hostile-string-io: rep insb of 32 bytes into 8 before the end of RAM\n"
msg_insw:  .asciz "hostile-string-io: rep insw of 32 words into 4 before the end of RAM\n"
msg_pass:  .asciz "hostile-string-io: RAM intact\n"
msg_fail:  .asciz "hostile-string-io: RAM changed\n"
