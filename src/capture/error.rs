//! Why capture stopped, and whether reconnecting from the checkpoint can help.

use super::source::SourceError;
use super::txn::AssembleError;
use crate::transport::envelope::EnvelopeError;
use crate::transport::kafka::SinkError;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("binlog transaction structure: {0}")]
    Assemble(#[from] AssembleError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("checkpoint store: {0}")]
    Checkpoint(String),
    #[error("preflight: {0}")]
    Preflight(String),
}

impl CaptureError {
    /// Worth retrying by reconnecting from the checkpoint (the same input would not fail again).
    pub fn is_transient(&self) -> bool {
        match self {
            CaptureError::Source(e) => e.is_transient(),
            CaptureError::Sink(_) | CaptureError::Checkpoint(_) => true,
            CaptureError::Assemble(_) | CaptureError::Envelope(_) | CaptureError::Preflight(_) => false,
        }
    }
}
