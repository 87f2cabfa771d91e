//! [`named_choices!`]: the GPU's routine choices (`--gpu-matmul`,
//! `--gpu-attention`, `--gpu-layers`, `--gpu-merge`) are each a closed set
//! whose first member is the default, named as the CLI takes and prints
//! them.

/// Declares a `Copy` enum whose first variant is its `Default`, each
/// variant with the name the CLI takes and prints, and what one of them is
/// called in a message (`what`):
///
/// - `ALL`, every variant in order, the default first;
/// - `name()` and `from_name()`;
/// - `Display` (the name) and `FromStr`, whose error names every choice:
///   `unknown attention routine "flash"; one of scores, flash-unit`.
///
/// ```
/// clearclip_model::named_choices! {
///     /// How to greet.
///     pub enum Greeting: "greeting" {
///         /// The default.
///         Hello => "hello",
///         Hi => "hi",
///     }
/// }
/// assert_eq!(Greeting::default(), Greeting::Hello);
/// assert_eq!("hi".parse(), Ok(Greeting::Hi));
/// assert_eq!(Greeting::Hi.to_string(), "hi");
/// assert_eq!("hey".parse::<Greeting>(), Err("unknown greeting \"hey\"; one of hello, hi".to_string()));
/// ```
#[macro_export]
macro_rules! named_choices {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $what:literal {
            $(#[$first_meta:meta])*
            $first:ident => $first_name:literal,
            $(
                $(#[$variant_meta:meta])*
                $variant:ident => $variant_name:literal,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        $vis enum $name {
            $(#[$first_meta])*
            #[default]
            $first,
            $(
                $(#[$variant_meta])*
                $variant,
            )*
        }

        impl $name {
            /// Every choice, the default first.
            pub const ALL: [$name; 1 + [$($variant_name),*].len()] = [$name::$first, $($name::$variant),*];

            /// The name the CLI takes and prints.
            pub fn name(self) -> &'static str {
                match self {
                    $name::$first => $first_name,
                    $($name::$variant => $variant_name,)*
                }
            }

            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.into_iter().find(|choice| choice.name() == name)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;

            fn from_str(name: &str) -> Result<Self, String> {
                Self::from_name(name).ok_or_else(|| {
                    let names: Vec<&str> = Self::ALL.iter().map(|choice| choice.name()).collect();
                    format!("unknown {} \"{name}\"; one of {}", $what, names.join(", "))
                })
            }
        }
    };
}
