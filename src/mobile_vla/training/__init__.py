"""mobile_vla.training"""
