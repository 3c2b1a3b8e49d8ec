"""twotower.distributed"""
