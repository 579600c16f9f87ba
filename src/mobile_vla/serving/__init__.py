"""mobile_vla.serving"""
