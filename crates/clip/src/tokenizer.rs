//! The CLIP BPE tokenizer, through the `tokenizers` crate and a `tokenizer.json`
//! built offline from OpenAI's vocabulary (`scripts/make_tokenizer.py`).
//!
//! Sequences are `<|startoftext|> ... <|endoftext|>`; longer than the context
//! they are cut as open_clip's `tokenize` does: keep the first `context`
//! tokens and make the last one `<|endoftext|>`.

use tokenizers::Tokenizer;

pub const START_OF_TEXT: u32 = 49406;
pub const END_OF_TEXT: u32 = 49407;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("the tokenizer file is not a valid tokenizer.json: {0}")]
    Parse(String),
    #[error("the tokenizer does not look like CLIP's: {0}")]
    NotClip(String),
    #[error("tokenizing {text:?} failed: {message}")]
    Encode { text: String, message: String },
}

#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    context_length: usize,
}

/// Token ids of several texts, padded with 0 to the longest of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// Row-major `[rows, len]`.
    pub ids: Vec<i64>,
    /// Length of every row (the longest sequence).
    pub len: usize,
    /// Position of `<|endoftext|>` in each row.
    pub eot: Vec<usize>,
    /// Which rows were cut to the context length.
    pub truncated: Vec<bool>,
}

impl TokenBatch {
    pub fn rows(&self) -> usize {
        self.eot.len()
    }

    /// The same rows, padded (with id 0, as [`ClipTokenizer::encode_batch`]
    /// pads) to `len` tokens; `len` below the batch's length keeps it.
    pub fn padded_to(&self, len: usize) -> TokenBatch {
        let len = len.max(self.len);
        let mut ids = Vec::with_capacity(self.rows() * len);
        for row in self.ids.chunks_exact(self.len.max(1)).take(self.rows()) {
            ids.extend_from_slice(row);
            ids.extend(std::iter::repeat_n(0, len - self.len));
        }
        TokenBatch { ids, len, eot: self.eot.clone(), truncated: self.truncated.clone() }
    }

    /// The rows of `parts`, in order, in one batch padded to the longest:
    /// what [`ClipTokenizer::encode_batch`] gives for all their texts at once.
    pub fn concat<'a>(parts: impl IntoIterator<Item = &'a TokenBatch>) -> TokenBatch {
        let parts: Vec<&TokenBatch> = parts.into_iter().collect();
        let len = parts.iter().map(|p| p.len).max().unwrap_or(0);
        let rows: usize = parts.iter().map(|p| p.rows()).sum();
        let mut ids = Vec::with_capacity(rows * len);
        for part in &parts {
            ids.extend(part.padded_to(len).ids);
        }
        let eot = parts.iter().flat_map(|p| p.eot.iter().copied()).collect();
        let truncated = parts.iter().flat_map(|p| p.truncated.iter().copied()).collect();
        TokenBatch { ids, len, eot, truncated }
    }
}

impl ClipTokenizer {
    /// Parse a `tokenizer.json` and check it encodes as CLIP's does.
    pub fn from_json_bytes(json: &[u8], context_length: usize) -> Result<Self, TokenizerError> {
        let inner = Tokenizer::from_bytes(json).map_err(|e| TokenizerError::Parse(e.to_string()))?;
        let tokenizer = Self { inner, context_length };
        let probe = tokenizer.encode_one("a photo of a cat.")?;
        let expected = [START_OF_TEXT, 320, 1125, 539, 320, 2368, 269, END_OF_TEXT];
        if probe.0 != expected {
            return Err(TokenizerError::NotClip(format!(
                "\"a photo of a cat.\" gave {:?}, CLIP gives {expected:?}",
                probe.0
            )));
        }
        Ok(tokenizer)
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Ids of one text with start and end tokens, cut to the context; and whether it was cut.
    pub fn encode_one(&self, text: &str) -> Result<(Vec<u32>, bool), TokenizerError> {
        let encoding = self.inner.encode(text, true).map_err(|e| TokenizerError::Encode {
            text: text.to_string(),
            message: e.to_string(),
        })?;
        let mut ids = encoding.get_ids().to_vec();
        let truncated = ids.len() > self.context_length;
        if truncated {
            // open_clip tokenize(): tokens = tokens[:context_length]; tokens[-1] = eot_token
            ids.truncate(self.context_length);
            ids[self.context_length - 1] = END_OF_TEXT;
        }
        Ok((ids, truncated))
    }

    /// Encode several texts into one batch as long as its longest member.
    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<TokenBatch, TokenizerError> {
        let encoded = texts
            .iter()
            .map(|t| self.encode_one(t.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let len = encoded.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(encoded.len() * len);
        let mut eot = Vec::with_capacity(encoded.len());
        let mut truncated = Vec::with_capacity(encoded.len());
        for (row, cut) in encoded {
            eot.push(row.len() - 1);
            truncated.push(cut);
            ids.extend(row.iter().map(|&id| id as i64));
            ids.extend(std::iter::repeat_n(0, len - row.len()));
        }
        Ok(TokenBatch { ids, len, eot, truncated })
    }
}

#[cfg(test)]
mod tests {
    use super::TokenBatch;

    #[test]
    fn padding_keeps_every_row_and_its_end_of_text() {
        let batch = TokenBatch { ids: vec![1, 2, 3, 4, 5, 0], len: 3, eot: vec![2, 1], truncated: vec![false, true] };
        let padded = batch.padded_to(5);
        assert_eq!(padded.ids, vec![1, 2, 3, 0, 0, 4, 5, 0, 0, 0]);
        assert_eq!((padded.len, padded.eot.clone(), padded.truncated.clone()), (5, batch.eot.clone(), batch.truncated.clone()));
        assert_eq!(batch.padded_to(2), batch, "never shorter than the batch");
        assert_eq!(TokenBatch::concat([&batch, &padded]).ids[..10], padded.ids[..]);
    }
}
