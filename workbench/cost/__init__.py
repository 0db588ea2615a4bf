"""Cost accounting: analytic FLOPs, hardware peaks and prices, MFU and money."""
