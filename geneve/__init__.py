"""GENEVE (RFC 8926) and GWLB option codec: decapsulation and the return path."""
