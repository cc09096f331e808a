/* EXITSCOPE_CONFIG("mode=real ...") puts the machine config into the ELF section the VMM reads. */
#ifndef EXITSCOPE_CONFIG_H
#define EXITSCOPE_CONFIG_H
#define EXITSCOPE_CONFIG(text) \
    .pushsection .exitscope, "", @progbits; .ascii text; .popsection
#endif
