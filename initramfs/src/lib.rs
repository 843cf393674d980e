//! The early-boot init of the initramfs.
