//! Kiln's image library: the tree model and the on-disk formats an image is made of
//! (ext4, dm-verity, FAT, GPT, cpio), and the stages that assemble an image from Debian packages.

pub mod civil;
#[cfg(feature = "build")]
pub mod container;
pub mod cpio;
#[cfg(feature = "build")]
pub mod debian;
#[cfg(feature = "build")]
pub mod definition;
pub mod disk;
pub mod ext4;
pub mod fat;
pub mod gpt;
pub mod hostdir;
pub mod kmod;
pub mod region;
pub mod rootfs;
pub mod tree;
#[cfg(feature = "build")]
pub mod tree_codec;
pub mod verity;

#[doc(hidden)]
pub mod testutil;
