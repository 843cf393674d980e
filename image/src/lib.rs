//! Kiln's image library: the tree model and the on-disk formats an image is made of
//! (ext4, dm-verity, FAT, GPT, cpio), and the stages that assemble an image from Debian packages.

pub mod hostdir;
pub mod tree;

#[doc(hidden)]
pub mod testutil;
