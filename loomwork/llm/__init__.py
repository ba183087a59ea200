"""The model seam: chat models through the `openai` client (tests script it with
`loomwork.testing`)."""
