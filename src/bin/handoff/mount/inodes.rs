//! The mount's inode numbers: each path the kernel has looked up gets a number, kept until
//! the kernel forgets it. Paths are the server's (beneath its root, "/" for the root).

use std::collections::HashMap;

/// The root directory's inode number (FUSE's `FUSE_ROOT_ID`).
pub const ROOT: u64 = 1;

struct Node {
    path: String,
    /// Lookups the kernel holds; the number is forgotten at zero.
    lookups: u64,
}

pub struct Inodes {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut t = Inodes {
            nodes: HashMap::new(),
            by_path: HashMap::new(),
            next: ROOT + 1,
        };
        t.nodes.insert(
            ROOT,
            Node {
                path: "/".into(),
                lookups: 1,
            },
        );
        t.by_path.insert("/".into(), ROOT);
        t
    }
}

/// `name` inside the directory `parent`.
pub fn child(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

impl Inodes {
    pub fn path(&self, ino: u64) -> Option<String> {
        self.nodes.get(&ino).map(|n| n.path.clone())
    }

    /// The number of `path`, if the kernel holds one.
    pub fn known(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// The number of `path` for a kernel lookup (counted), made if it has none.
    pub fn lookup(&mut self, path: &str) -> u64 {
        let ino = match self.by_path.get(path) {
            Some(ino) => *ino,
            None => {
                let ino = self.next;
                self.next += 1;
                self.nodes.insert(
                    ino,
                    Node {
                        path: path.to_owned(),
                        lookups: 0,
                    },
                );
                self.by_path.insert(path.to_owned(), ino);
                ino
            }
        };
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.lookups += 1;
        }
        ino
    }

    /// The kernel dropped `count` lookups of `ino`.
    pub fn forget(&mut self, ino: u64, count: u64) {
        if ino == ROOT {
            return;
        }
        let Some(n) = self.nodes.get_mut(&ino) else {
            return;
        };
        n.lookups = n.lookups.saturating_sub(count);
        if n.lookups == 0 {
            let path = n.path.clone();
            self.nodes.remove(&ino);
            if self.by_path.get(&path) == Some(&ino) {
                self.by_path.remove(&path);
            }
        }
    }

    /// `from` was renamed to `to`: it and everything beneath it take the new path (what was
    /// at `to` loses its name).
    pub fn renamed(&mut self, from: &str, to: &str) {
        self.removed(to);
        let prefix = format!("{from}/");
        let moved: Vec<(String, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| *p == from || p.starts_with(&prefix))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, ino) in moved {
            let new = format!("{to}{}", &old[from.len()..]);
            self.by_path.remove(&old);
            self.by_path.insert(new.clone(), ino);
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.path = new;
            }
        }
    }

    /// `path` no longer names anything; its number stays until the kernel forgets it.
    pub fn removed(&mut self, path: &str) {
        self.by_path.remove(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_renames_and_are_forgotten() {
        let mut t = Inodes::default();
        let d = t.lookup("/d");
        let f = t.lookup("/d/f");
        assert_eq!(t.known("/d/f"), Some(f));
        t.renamed("/d", "/e");
        assert_eq!(t.path(f).as_deref(), Some("/e/f"));
        assert_eq!(t.path(d).as_deref(), Some("/e"));
        assert_eq!(t.known("/e/f"), Some(f));
        assert_ne!(t.known("/d/f"), Some(f));
        t.forget(f, 1);
        assert_eq!(t.path(f), None);
        t.forget(ROOT, 10);
        assert_eq!(t.path(ROOT).as_deref(), Some("/"));
        assert_eq!(child("/", "a"), "/a");
        assert_eq!(child("/a", "b"), "/a/b");
    }
}
