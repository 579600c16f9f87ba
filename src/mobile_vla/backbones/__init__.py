"""mobile_vla.backbones"""
