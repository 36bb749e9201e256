//! Results as workers hold them: Arrow IPC streams or opaque bytes.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::{Field, Schema};
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use daskrs_core::DataFormat;

use crate::TaskError;

/// One result: its bytes and how to read them.
#[derive(Debug, Clone, PartialEq)]
pub struct Data {
    pub format: DataFormat,
    pub bytes: Bytes,
}

impl Data {
    pub fn opaque(bytes: impl Into<Bytes>) -> Data {
        Data {
            format: DataFormat::Opaque,
            bytes: bytes.into(),
        }
    }

    pub fn empty() -> Data {
        Data::opaque(Bytes::new())
    }

    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// One array as a single-column Arrow IPC stream (column `value`).
    pub fn from_array(array: ArrayRef) -> Result<Data, TaskError> {
        let failed = |e: arrow::error::ArrowError| TaskError::Failed(e.to_string());
        let schema = Arc::new(Schema::new(vec![Field::new(
            "value",
            array.data_type().clone(),
            true,
        )]));
        let batch = RecordBatch::try_new(schema.clone(), vec![array]).map_err(failed)?;
        let mut buf = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut buf, &schema).map_err(failed)?;
            w.write(&batch).map_err(failed)?;
            w.finish().map_err(failed)?;
        }
        Ok(Data {
            format: DataFormat::Arrow,
            bytes: buf.into(),
        })
    }

    /// A shuffle output in pieces.
    pub fn pieces(pieces: &[Bytes]) -> Data {
        Data {
            format: DataFormat::Pieces,
            bytes: daskrs_proto::pieces::pack(pieces),
        }
    }

    /// Piece `i` of a result in pieces, as the Arrow stream it is.
    pub fn piece(&self, i: u32) -> Result<Data, TaskError> {
        if self.format != DataFormat::Pieces {
            return Err(TaskError::Corrupt(format!(
                "piece {i} asked of a result of {} data",
                self.format.name()
            )));
        }
        Ok(Data {
            format: DataFormat::Arrow,
            bytes: daskrs_proto::pieces::piece(&self.bytes, i as usize)
                .map_err(TaskError::Corrupt)?,
        })
    }

    /// The record batches of an Arrow result.
    pub fn batches(&self) -> Result<Vec<RecordBatch>, TaskError> {
        if self.format != DataFormat::Arrow {
            return Err(TaskError::Corrupt(format!(
                "expected an Arrow result, got {} bytes of {} data",
                self.bytes.len(),
                self.format.name()
            )));
        }
        let corrupt = |e| TaskError::Corrupt(format!("corrupt Arrow IPC stream: {e}"));
        let reader = daskrs_engine::ipc::reader(&self.bytes[..]).map_err(corrupt)?;
        reader.collect::<Result<Vec<_>, _>>().map_err(corrupt)
    }

    /// The first column of every batch, in order.
    pub fn arrays(&self) -> Result<Vec<ArrayRef>, TaskError> {
        Ok(self
            .batches()?
            .into_iter()
            .filter(|b| b.num_columns() > 0)
            .map(|b| b.column(0).clone())
            .collect())
    }
}

/// Concatenates arrays that may be of different numeric types, as Float64
/// when the types differ.
pub fn concat_numeric(arrays: &[ArrayRef]) -> Result<ArrayRef, TaskError> {
    let arrays = unify(arrays)?;
    let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
    if refs.is_empty() {
        return Ok(Arc::new(arrow::array::Int64Array::from(Vec::<i64>::new())));
    }
    arrow::compute::concat(&refs).map_err(|e| TaskError::Failed(e.to_string()))
}

/// Casts arrays to one type: their own when they agree, Float64 otherwise.
pub fn unify(arrays: &[ArrayRef]) -> Result<Vec<ArrayRef>, TaskError> {
    use arrow::datatypes::DataType;
    let Some(first) = arrays.first() else {
        return Ok(Vec::new());
    };
    for a in arrays {
        if !a.data_type().is_numeric() {
            return Err(TaskError::Failed(format!(
                "expected numbers, got an array of {}",
                a.data_type()
            )));
        }
    }
    if arrays.iter().all(|a| a.data_type() == first.data_type()) {
        return Ok(arrays.to_vec());
    }
    arrays
        .iter()
        .map(|a| {
            arrow::compute::cast(a, &DataType::Float64)
                .map_err(|e| TaskError::Failed(e.to_string()))
        })
        .collect()
}
