"""The model seam: chat models through the `openai` client, and a scripted offline model server."""
