"""GENEVE (RFC 8926) and GWLB wire constants."""

GENEVE_PORT = 6081
GENEVE_HDR_LEN = 8
OPT_HDR_LEN = 4
OPT_CRITICAL = 0x80          # high bit of an option's type
FLAG_OAM = 0x80              # O bit, second header byte
PROTO_IPV4 = 0x0800
PROTO_IPV6 = 0x86DD

# GWLB's options (class 0x0108, Amazon) and their data lengths in bytes.
GWLB_CLASS = 0x0108
GWLB_ENDPOINT_ID = 1
GWLB_ENDPOINT_ID_LEN = 8
GWLB_ATTACHMENT_ID = 2
GWLB_ATTACHMENT_ID_LEN = 8
GWLB_FLOW_COOKIE = 3
GWLB_FLOW_COOKIE_LEN = 4
# outer IPv4 20 + UDP 8 + GENEVE 8 + options (4+8)+(4+8)+(4+4)
GWLB_OVERHEAD = 68
