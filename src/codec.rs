//! The protobuf codec every generated client and server uses: prost's, with
//! small initial buffers.
//!
//! tonic gives each stream an 8 KiB encode and an 8 KiB decode buffer up
//! front. An agent holds two streams open for days and sends a few hundred
//! bytes a second, so at 10,000 agents those idle buffers alone would be
//! 320 MiB of server memory. Starting at 1 KiB saves 28 KiB per agent on the
//! server (and a little on each agent); a larger message still gets the
//! room it needs, as the buffers grow on demand.
//!
//! [`PreEncodedCodec`] is the same on its response side; its requests are
//! messages already encoded by the caller (the agent's `Report` batches,
//! written by `wire::encode_batch` without building the prost struct), which
//! it copies into the stream as they are. It must never change a byte: the
//! gRPC framing around them is tonic's, as for every other stream.

use prost::bytes::{BufMut, Bytes};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial encode and decode buffer of each stream, in bytes.
pub const BUFFER_BYTES: usize = 1024;
/// Encoded bytes after which a streaming encoder yields (tonic's default).
pub const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// prost encoding with [`BUFFER_BYTES`] buffers (set as the generated
/// code's codec in build.rs).
#[derive(Debug, Clone)]
pub struct SmallCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for SmallCodec<T, U> {
    fn default() -> Self {
        SmallCodec(std::marker::PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

impl<T, U> Codec for SmallCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}

/// Requests already encoded as protobuf bytes, responses decoded by prost
/// (into `U`), both with [`BUFFER_BYTES`] buffers.
#[derive(Debug, Clone)]
pub struct PreEncodedCodec<U>(std::marker::PhantomData<U>);

impl<U> Default for PreEncodedCodec<U> {
    fn default() -> Self {
        PreEncodedCodec(std::marker::PhantomData)
    }
}

impl<U> Codec for PreEncodedCodec<U>
where
    U: prost::Message + Default + Send + 'static,
{
    type Encode = Bytes;
    type Decode = U;
    type Encoder = PreEncoded;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<(), U>::raw_decoder(settings())
    }
}

/// The encoder of [`PreEncodedCodec`]: a message's bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct PreEncoded;

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}
