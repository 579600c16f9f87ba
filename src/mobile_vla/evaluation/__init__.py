"""mobile_vla.evaluation"""
