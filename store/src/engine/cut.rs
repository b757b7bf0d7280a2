//! Cuts an import's byte stream (an HTTP body's frames, of whatever sizes
//! they arrive in) into whole chunks.
//!
//! A chunk that lies inside one frame is a slice of it, not a copy: a
//! local HTTP upload arrives in frames of tens to hundreds of KiB, so most
//! 64 KiB chunks need no copy. Only a chunk that straddles frames is
//! gathered into a buffer of its own.

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};

use crate::error::{Result, StoreError};

/// The pieces of an input stream, handed out `want` bytes at a time.
pub(super) struct Cutter<S> {
    input: S,
    /// What the last frame still holds past the bytes handed out.
    held: Bytes,
}

impl<S: Stream<Item = std::io::Result<Bytes>> + Unpin> Cutter<S> {
    pub(super) fn new(input: S) -> Self {
        Cutter {
            input,
            held: Bytes::new(),
        }
    }

    /// The next `want` bytes of the input: fewer (possibly none) only where
    /// the input ends.
    pub(super) async fn take(&mut self, want: usize) -> Result<Bytes> {
        if self.held.len() >= want {
            return Ok(self.held.split_to(want));
        }
        let mut gathered = BytesMut::new();
        loop {
            if !self.held.is_empty() {
                if gathered.capacity() == 0 {
                    gathered.reserve(want);
                }
                let n = (want - gathered.len()).min(self.held.len());
                gathered.extend_from_slice(&self.held[..n]);
                self.held.advance(n);
                if gathered.len() == want {
                    break;
                }
            }
            match self.input.next().await {
                None => break,
                Some(Err(e)) => return Err(StoreError::ImportStream(e.to_string())),
                Some(Ok(frame)) => self.held = frame,
            }
            if gathered.is_empty() && self.held.len() >= want {
                return Ok(self.held.split_to(want));
            }
        }
        Ok(gathered.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(frames: &[usize], wants: &[usize]) -> Vec<Bytes> {
        let data: Vec<u8> = (0..frames.iter().sum::<usize>())
            .map(|i| (i % 251) as u8)
            .collect();
        let mut at = 0;
        let pieces: Vec<std::io::Result<Bytes>> = frames
            .iter()
            .map(|&n| {
                at += n;
                Ok(Bytes::copy_from_slice(&data[at - n..at]))
            })
            .collect();
        let mut cutter = Cutter::new(futures::stream::iter(pieces));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let out: Vec<Bytes> = wants
            .iter()
            .map(|&w| rt.block_on(cutter.take(w)).unwrap())
            .collect();
        let joined: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(
            joined,
            data[..joined.len()],
            "the cut pieces are the input, in order"
        );
        out
    }

    #[test]
    fn pieces_have_the_lengths_asked_for_until_the_input_ends() {
        let lens = |v: Vec<Bytes>| v.iter().map(Bytes::len).collect::<Vec<_>>();
        assert_eq!(lens(cut(&[10, 3, 30], &[8, 8, 8, 8, 8, 8])), [8, 8, 8, 8, 8, 3]);
        assert_eq!(lens(cut(&[1; 20], &[7, 7, 7, 7])), [7, 7, 6, 0]);
        assert_eq!(lens(cut(&[100], &[64, 64, 64])), [64, 36, 0]);
        assert_eq!(lens(cut(&[], &[5])), [0]);
    }

    #[test]
    fn a_piece_inside_one_frame_is_a_slice_of_it() {
        let frames = [40usize, 100];
        let data: Vec<Bytes> = frames.iter().map(|&n| Bytes::from(vec![7u8; n])).collect();
        let starts: Vec<usize> = data.iter().map(|b| b.as_ptr() as usize).collect();
        let inside = |p: &Bytes, frame: usize| {
            let at = p.as_ptr() as usize;
            at >= starts[frame] && at + p.len() <= starts[frame] + frames[frame]
        };
        let mut cutter = Cutter::new(futures::stream::iter(data.into_iter().map(Ok)));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut take = |n| rt.block_on(cutter.take(n)).unwrap();
        assert_eq!(take(32).as_ptr() as usize, starts[0], "inside the first frame");
        let straddling = take(32);
        assert!(
            !inside(&straddling, 0) && !inside(&straddling, 1),
            "gathered across two frames"
        );
        assert_eq!(straddling, vec![7u8; 32]);
        assert_eq!(
            take(32).as_ptr() as usize,
            starts[1] + 24,
            "inside the second frame"
        );
    }
}
