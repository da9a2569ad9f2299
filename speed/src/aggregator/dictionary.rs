//! Interned dimension values: each view's row keys hold a dense id per dimension instead of the
//! value, so a string is copied once per distinct value, not once per event.

use std::borrow::Cow;

use tributary_schemas::event::Value;

use super::HashMap;

/// One distinct value of one dimension, owned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum DimValue {
    Null,
    Str(Box<str>),
    /// Ints, timestamps (epoch ms), bools (0/1) and floats (IEEE bits), tagged by kind.
    Scalar(u8, u64),
}

/// Interns one dimension's values: ids are dense, 0 is `NULL`.
#[derive(Debug, Default)]
pub(super) struct Dictionary {
    strings: HashMap<Box<str>, u32>,
    scalars: HashMap<(u8, u64), u32>,
    values: Vec<DimValue>,
}

impl Dictionary {
    pub(super) fn new() -> Self {
        Self {
            values: vec![DimValue::Null],
            ..Self::default()
        }
    }

    pub(super) fn id(&mut self, value: &Value<'_>) -> u32 {
        let next = self.values.len() as u32;
        let scalar = match value {
            Value::Null => return 0,
            Value::Str(s) => {
                if let Some(&id) = self.strings.get(s.as_ref()) {
                    return id;
                }
                self.strings.insert(s.as_ref().into(), next);
                self.values.push(DimValue::Str(s.as_ref().into()));
                return next;
            }
            Value::Int(v) => (1, *v as u64),
            Value::Timestamp(v) => (2, *v as u64),
            Value::Bool(v) => (3, u64::from(*v)),
            Value::Float(v) => (4, v.to_bits()),
        };
        *self.scalars.entry(scalar).or_insert_with(|| {
            self.values.push(DimValue::Scalar(scalar.0, scalar.1));
            next
        })
    }

    /// The value of `id`, borrowing the interned string.
    pub(super) fn borrowed(&self, id: u32) -> Value<'_> {
        match &self.values[id as usize] {
            DimValue::Str(s) => Value::Str(Cow::Borrowed(s)),
            _ => self.value(id),
        }
    }

    pub(super) fn value(&self, id: u32) -> Value<'static> {
        match &self.values[id as usize] {
            DimValue::Null => Value::Null,
            DimValue::Str(s) => Value::Str(s.to_string().into()),
            DimValue::Scalar(1, v) => Value::Int(*v as i64),
            DimValue::Scalar(2, v) => Value::Timestamp(*v as i64),
            DimValue::Scalar(3, v) => Value::Bool(*v != 0),
            DimValue::Scalar(_, v) => Value::Float(f64::from_bits(*v)),
        }
    }
}
