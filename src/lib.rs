//! hybrid-gateway: connects an Amazon EKS cluster's VPC to pods on EKS Hybrid Nodes.
//!
//! Data flows one way: [`config`] → [`datapath`] (sysctls, the VXLAN device, the VTEP
//! reconciler) → the kernel.

pub mod aws;
pub mod backoff;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod doctor;
pub mod election;
pub mod k8s;
pub mod probe;
pub mod reconcile;
pub mod telemetry;
