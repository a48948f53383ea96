"""The experiment VTP exists for, on the embedded demo: `openvtp study` (tokenizer variants x steps x seeds) and its
paired statistics."""
