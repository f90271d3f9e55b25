//! Header maps: the [`Headers`] type tests read, and the ABI's map encoding
//! (`u32 count; count × (u32 key_len, u32 value_len); key\0value\0…`).

/// An ordered list of header (or metadata) pairs, as bytes: a value need not be UTF-8.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(Vec<u8>, Vec<u8>)>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    /// Headers from string pairs, e.g. `Headers::from_pairs(&[(":status", "200")])`.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Headers(
            pairs
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.0.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// The first value of `name` (names compare case-insensitively), as bytes.
    pub fn get_bytes(&self, name: impl AsRef<[u8]>) -> Option<&[u8]> {
        let name = name.as_ref();
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `name` as text (invalid UTF-8 replaced).
    pub fn get(&self, name: &str) -> Option<String> {
        self.get_bytes(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Every value of `name`, in order, as text.
    pub fn get_all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// Appends a pair (`proxy_add_header_map_value`).
    pub fn add(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.0
            .push((name.as_ref().to_vec(), value.as_ref().to_vec()));
    }

    /// Sets `name` to one value, replacing every existing one, or appends it
    /// (`proxy_replace_header_map_value`).
    pub fn replace(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let (name, value) = (name.as_ref(), value.as_ref());
        match self
            .0
            .iter()
            .position(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some(first) => {
                self.0[first].1 = value.to_vec();
                let mut i = 0;
                self.0.retain(|(k, _)| {
                    i += 1;
                    i - 1 == first || !k.eq_ignore_ascii_case(name)
                });
            }
            None => self.add(name, value),
        }
    }

    /// Removes every value of `name` (`proxy_remove_header_map_value`).
    pub fn remove(&mut self, name: impl AsRef<[u8]>) {
        let name = name.as_ref();
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    /// The ABI encoding of this map.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        for (k, v) in &self.0 {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in &self.0 {
            out.extend_from_slice(k);
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    /// Decodes the ABI encoding; `None` if it is malformed.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() {
            // The SDK sends an empty map as zero bytes (e.g. no trailers).
            return Some(Headers::new());
        }
        let word = |at: usize| -> Option<usize> {
            let b = bytes.get(at..at + 4)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        let count = word(0)?;
        let mut sizes = Vec::with_capacity(count.min(1024));
        for i in 0..count {
            sizes.push((word(4 + 8 * i)?, word(8 + 8 * i)?));
        }
        let mut at = 4 + 8 * count;
        let mut take = |len: usize| -> Option<Vec<u8>> {
            let data = bytes.get(at..at + len)?.to_vec();
            // Each key and value is followed by a NUL.
            if *bytes.get(at + len)? != 0 {
                return None;
            }
            at += len + 1;
            Some(data)
        };
        let mut pairs = Vec::with_capacity(sizes.len());
        for (k, v) in sizes {
            let key = take(k)?;
            let value = take(v)?;
            pairs.push((key, value));
        }
        Some(Headers(pairs))
    }
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Headers(
            iter.into_iter()
                .map(|(k, v)| (k.as_ref().to_vec(), v.as_ref().to_vec()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips() {
        let mut h = Headers::from_pairs(&[(":status", "200"), ("a", "")]);
        h.add("b", [0xff, 0x00, 0x41]);
        assert_eq!(Headers::decode(&h.encode()), Some(h));
        assert_eq!(Headers::decode(&[]), Some(Headers::new()));
        assert_eq!(Headers::decode(&[1, 0, 0, 0, 9]), None);
    }

    #[test]
    fn replace_keeps_one_value_and_remove_drops_all() {
        let mut h = Headers::from_pairs(&[("x", "1"), ("y", "2"), ("X", "3")]);
        h.replace("x", "4");
        assert_eq!(h.get_all("x"), vec!["4"]);
        assert_eq!(h.len(), 2);
        h.replace("z", "5");
        assert_eq!(h.get("Z").as_deref(), Some("5"));
        h.remove("y");
        assert_eq!(h.get("y"), None);
    }
}
