"""The notifier: the delivery steps, email over SMTP and webhook posts, each delivered once."""
