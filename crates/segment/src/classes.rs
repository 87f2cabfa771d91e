//! Class lists as the user types them: classes separated by `;`, synonyms of
//! one class by `,` (`sky; horse, pony; grass`). A class with synonyms scores
//! the max over its names (reference: `get_cls_idx` + `postprocess_result`).

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassSpec {
    /// One or more names; the first is the one shown.
    pub names: Vec<String>,
}

impl ClassSpec {
    pub fn display_name(&self) -> &str {
        &self.names[0]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassList {
    pub classes: Vec<ClassSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassError {
    #[error("no classes given: type class names separated by ';' (synonyms by ','), e.g. \"sky; horse, pony; grass\"")]
    Empty,
    #[error("class {index} is empty (two ';' in a row, or a trailing ',')")]
    EmptyClass { index: usize },
    #[error("{count} classes given; at most {max} are supported")]
    TooMany { count: usize, max: usize },
}

/// Label maps are 8-bit, so class indices must fit in a byte.
pub const MAX_CLASSES: usize = 255;

impl ClassList {
    /// Parse `a; b, c; d`. Returns the list and warnings (e.g. duplicates).
    /// A trailing `;` is ignored; empty names inside a class are errors.
    pub fn parse(spec: &str) -> Result<(Self, Vec<String>), ClassError> {
        let mut parts: Vec<&str> = spec.split(';').collect();
        while parts.last().is_some_and(|p| p.trim().is_empty()) {
            parts.pop();
        }
        if parts.is_empty() {
            return Err(ClassError::Empty);
        }
        let mut classes = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            let names: Vec<String> = part.split(',').map(|n| n.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
            if names.iter().any(String::is_empty) {
                return Err(ClassError::EmptyClass { index: index + 1 });
            }
            classes.push(ClassSpec { names });
        }
        if classes.len() > MAX_CLASSES {
            return Err(ClassError::TooMany { count: classes.len(), max: MAX_CLASSES });
        }
        let list = Self { classes };
        let warnings = list.duplicate_warnings();
        Ok((list, warnings))
    }

    fn duplicate_warnings(&self) -> Vec<String> {
        let mut seen: Vec<(String, usize)> = Vec::new();
        let mut warnings = Vec::new();
        for (index, class) in self.classes.iter().enumerate() {
            for name in &class.names {
                let key = name.to_lowercase();
                match seen.iter().find(|(n, _)| *n == key) {
                    Some((_, first)) if *first == index => {
                        warnings.push(format!("\"{name}\" appears twice in class {}; it counts once", index + 1))
                    }
                    Some((_, first)) => warnings.push(format!(
                        "\"{name}\" is in class {} and class {}: the two will split its probability",
                        first + 1,
                        index + 1
                    )),
                    None => seen.push((key, index)),
                }
            }
        }
        warnings
    }

    pub fn len(&self) -> usize {
        self.classes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// All names in order, and the class index of each (`get_cls_idx`).
    pub fn queries(&self) -> (Vec<&str>, Vec<usize>) {
        let mut names = Vec::new();
        let mut index = Vec::new();
        for (i, class) in self.classes.iter().enumerate() {
            for name in &class.names {
                names.push(name.as_str());
                index.push(i);
            }
        }
        (names, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_classes_and_synonyms() {
        let (list, warnings) = ClassList::parse(" sky ;horse,  pony ; tall   grass;").unwrap();
        assert!(warnings.is_empty());
        let names: Vec<Vec<&str>> = list.classes.iter().map(|c| c.names.iter().map(String::as_str).collect()).collect();
        assert_eq!(names, vec![vec!["sky"], vec!["horse", "pony"], vec!["tall grass"]]);
        assert_eq!(list.queries(), (vec!["sky", "horse", "pony", "tall grass"], vec![0, 1, 1, 2]));
    }

    #[test]
    fn rejects_empty_input_and_empty_classes() {
        assert_eq!(ClassList::parse("  ").unwrap_err(), ClassError::Empty);
        assert_eq!(ClassList::parse(";;").unwrap_err(), ClassError::Empty);
        assert_eq!(ClassList::parse("a;;b").unwrap_err(), ClassError::EmptyClass { index: 2 });
        assert_eq!(ClassList::parse("a;b,").unwrap_err(), ClassError::EmptyClass { index: 2 });
    }

    #[test]
    fn warns_on_duplicates() {
        let (list, warnings) = ClassList::parse("cat;dog;Cat").unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("class 1 and class 3"), "{warnings:?}");
    }
}
