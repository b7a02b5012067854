/**
 * Request priority: four levels, Critical first. Dispatch takes the highest level
 * that has work, FIFO within a level.
 *
 * @module Priority
 */
import { Schema } from "effect"

/** The four levels, highest first. */
export const levels = ["Critical", "High", "Normal", "Low"] as const

export type Priority = typeof levels[number]

export const Critical: Priority = "Critical"
export const High: Priority = "High"
export const Normal: Priority = "Normal"
export const Low: Priority = "Low"

/** Whether `value` is one of the four levels: four comparisons, no allocation (admission runs it on every request). */
export const is = (value: unknown): value is Priority => value === "Critical" || value === "High" || value === "Normal" || value === "Low"

/** Schema of a priority name. */
export const schema = Schema.Literals(levels)

/** 0 for Critical … 3 for Low: the index of the level's FIFO. */
export const rank = (priority: Priority): 0 | 1 | 2 | 3 => levels.indexOf(priority) as 0 | 1 | 2 | 3
