"""Text -> syntax tree: the lark grammar's parser and the syntax classes."""
