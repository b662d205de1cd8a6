//! The RDMA data channel over rdma_cm + verbs (RoCE, IB, soft-RoCE). All `unsafe` in handoff
//! lives under this module, each block with the reason it is sound.

pub mod cm;
pub mod endpoint;
pub mod verbs;
