//! End-to-end scenarios that boot built images in QEMU.
