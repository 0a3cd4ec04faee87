//! GBFS v2.3 and v3.0 `vehicle_types.json`: what each `vehicle_type_id` of
//! a status's `vehicle_types_available` is, so that bikes are counted by
//! what the system says they are rather than guessed from their ids.
//!
//! A type is classified by its `form_factor` and `propulsion_type`:
//! a `bicycle` or `cargo_bicycle` is mechanical when `human`, an e-bike when
//! `electric_assist` or `electric`; anything else (scooters, mopeds, cars,
//! a bicycle with a combustion engine, a propulsion this version does not
//! know) is another vehicle, counted apart ([`crate::BikeTypes::other`]).
//!
//! # Examples
//!
//! ```
//! use gbfs_feed::vehicle_types::{parse_vehicle_types, VehicleKind};
//!
//! let types = parse_vehicle_types(br#"{"last_updated": 1, "ttl": 0, "version": "2.3", "data": {"vehicle_types": [
//!     {"vehicle_type_id": "abc", "form_factor": "bicycle", "propulsion_type": "human"},
//!     {"vehicle_type_id": "def", "form_factor": "bicycle", "propulsion_type": "electric_assist", "max_range_meters": 60000},
//!     {"vehicle_type_id": "ghi", "form_factor": "scooter_standing", "propulsion_type": "electric", "max_range_meters": 20000}]}}"#)?;
//! assert_eq!(types.kind("abc"), Some(VehicleKind::Mechanical));
//! assert_eq!(types.kind("def"), Some(VehicleKind::Ebike));
//! assert_eq!(types.kind("ghi"), Some(VehicleKind::Other));
//! assert_eq!(types.kind("xyz"), None, "not defined");
//! # Ok::<(), gbfs_feed::FeedError>(())
//! ```

use super::json::{parse_payload, Ctx};
use super::{FeedError, FeedKind, Problem};
use std::collections::BTreeMap;

/// What a vehicle type counts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VehicleKind {
    /// A bicycle without assistance.
    Mechanical,
    /// An electric-assisted or electric bicycle.
    Ebike,
    /// Any other vehicle.
    Other,
}

impl VehicleKind {
    /// The kind of a type of `form_factor` and `propulsion_type`.
    ///
    /// # Examples
    ///
    /// ```
    /// use gbfs_feed::vehicle_types::VehicleKind;
    ///
    /// assert_eq!(VehicleKind::of("cargo_bicycle", "electric_assist"), VehicleKind::Ebike);
    /// assert_eq!(VehicleKind::of("bicycle", "combustion"), VehicleKind::Other);
    /// assert_eq!(VehicleKind::of("moped", "electric"), VehicleKind::Other);
    /// ```
    pub fn of(form_factor: &str, propulsion_type: &str) -> VehicleKind {
        match (form_factor, propulsion_type) {
            ("bicycle" | "cargo_bicycle", "human") => VehicleKind::Mechanical,
            ("bicycle" | "cargo_bicycle", "electric_assist" | "electric") => VehicleKind::Ebike,
            _ => VehicleKind::Other,
        }
    }
}

/// The vehicle types of a system, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VehicleTypes {
    kinds: BTreeMap<String, VehicleKind>,
}

impl VehicleTypes {
    /// The kind of the type `id`; `None` when the system does not define it.
    pub fn kind(&self, id: &str) -> Option<VehicleKind> {
        self.kinds.get(id).copied()
    }

    /// How many types are defined.
    pub fn len(&self) -> usize {
        self.kinds.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }
}

impl FromIterator<(String, VehicleKind)> for VehicleTypes {
    fn from_iter<I: IntoIterator<Item = (String, VehicleKind)>>(kinds: I) -> Self {
        VehicleTypes {
            kinds: kinds.into_iter().collect(),
        }
    }
}

/// Parses a `vehicle_types.json` payload (GBFS v2.1 and later).
///
/// Refused whole, naming the type and field, when it is not JSON, lacks
/// `data.vehicle_types`, a type lacks its id, `form_factor` or
/// `propulsion_type` or has one that is not a string, or an id is listed
/// twice (which type would a status mean?). Values this version does not
/// know are accepted, as other vehicles.
///
/// # Examples
///
/// ```
/// use gbfs_feed::vehicle_types::parse_vehicle_types;
///
/// let twice = br#"{"last_updated": 1, "data": {"vehicle_types": [
///     {"vehicle_type_id": "a", "form_factor": "bicycle", "propulsion_type": "human"},
///     {"vehicle_type_id": "a", "form_factor": "bicycle", "propulsion_type": "electric_assist"}]}}"#;
/// let error = parse_vehicle_types(twice).unwrap_err();
/// assert!(error.to_string().contains("listed twice"), "{error}");
/// let no_form = br#"{"last_updated": 1, "data": {"vehicle_types": [{"vehicle_type_id": "a", "propulsion_type": "human"}]}}"#;
/// assert_eq!(parse_vehicle_types(no_form).unwrap_err().reason(), "invalid_field");
/// ```
pub fn parse_vehicle_types(bytes: &[u8]) -> Result<VehicleTypes, FeedError> {
    let ctx = Ctx::new(FeedKind::VehicleTypes);
    let root = parse_payload(ctx.feed, bytes)?;
    let top = ctx.object("(top level)", &root)?;
    let data = ctx.object("data", ctx.req(top, "data")?)?;
    let types = ctx.array(
        "data.vehicle_types",
        ctx.req(data, "vehicle_types")
            .map_err(|_| ctx.err("data.vehicle_types", Problem::Missing))?,
    )?;
    if types.is_empty() {
        // Every vehicle would be another vehicle: an outage, not a system.
        return Err(ctx.outage("vehicle_types.json lists no vehicle types"));
    }
    let mut kinds = BTreeMap::new();
    for (i, raw) in types.iter().enumerate() {
        let at = format!("data.vehicle_types[{i}]");
        let item = ctx.object(&at, raw)?;
        let text = |ctx: &Ctx, field: &str| -> Result<String, FeedError> {
            let field_at = format!("{at}.{field}");
            let value = ctx.req(item, field).map_err(|e| match e {
                FeedError::Field { problem, .. } => ctx.err(field_at.clone(), problem),
                other => other,
            })?;
            value
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| ctx.wrong(&field_at, "a string", value))
        };
        let id = text(&ctx, "vehicle_type_id")?;
        // Later errors name the type (in the place a station's name goes).
        let ctx = ctx.at_station(format!("vehicle type {id}"));
        let form = text(&ctx, "form_factor")?;
        let propulsion = text(&ctx, "propulsion_type")?;
        // Spelling is not meaning: `Bicycle` is a bicycle.
        let kind = VehicleKind::of(&form.to_ascii_lowercase(), &propulsion.to_ascii_lowercase());
        if kind == VehicleKind::Other {
            tracing::debug!(
                id,
                form,
                propulsion,
                "counted as another vehicle, not a bike"
            );
        }
        if kinds.insert(id.clone(), kind).is_some() {
            return Err(ctx.err(
                format!("{at}.vehicle_type_id"),
                Problem::OutOfRange(format!("{id:?} is listed twice")),
            ));
        }
    }
    // Other fields (names, ranges, pricing) are not counts: left alone.
    Ok(VehicleTypes { kinds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_truncated_and_hostile_payloads_are_refused_naming_the_field() {
        let ok = br#"{"last_updated": 1, "data": {"vehicle_types": [{"vehicle_type_id": "a", "form_factor": "bicycle", "propulsion_type": "human"}]}}"#;
        assert_eq!(parse_vehicle_types(ok).unwrap().len(), 1);
        for cut in 0..ok.len() {
            let error = parse_vehicle_types(&ok[..cut]).unwrap_err();
            assert_eq!(error.reason(), "invalid_json", "cut at {cut}: {error}");
        }
        let cases: &[(&[u8], &str)] = &[
            (b"[]", "(top level)"),
            (br#"{"data": {"vehicle_types": []}}"#, "no vehicle types"),
            (br#"{"data": {}}"#, "data.vehicle_types"),
            (br#"{"data": {"vehicle_types": {}}}"#, "data.vehicle_types"),
            (br#"{"data": {"vehicle_types": [7]}}"#, "data.vehicle_types[0]"),
            (
                br#"{"data": {"vehicle_types": [{"vehicle_type_id": 7, "form_factor": "bicycle", "propulsion_type": "human"}]}}"#,
                "data.vehicle_types[0].vehicle_type_id",
            ),
            (
                br#"{"data": {"vehicle_types": [{"vehicle_type_id": "a", "form_factor": null, "propulsion_type": "human"}]}}"#,
                "data.vehicle_types[0].form_factor",
            ),
            (
                br#"{"data": {"vehicle_types": [{"vehicle_type_id": "a", "form_factor": "bicycle", "propulsion_type": ["human"]}]}}"#,
                "data.vehicle_types[0].propulsion_type",
            ),
        ];
        for (payload, field) in cases {
            let error = parse_vehicle_types(payload).unwrap_err();
            assert!(
                error.to_string().contains(field),
                "{}: {error}",
                String::from_utf8_lossy(payload)
            );
            assert!(error.to_string().contains("vehicle_types.json"), "{error}");
        }
        // Far beyond any real feed: refused before it is parsed.
        let huge = vec![b' '; crate::MAX_PAYLOAD_BYTES + 1];
        assert_eq!(
            parse_vehicle_types(&huge).unwrap_err().reason(),
            "too_large"
        );
    }

    #[test]
    fn values_a_later_version_may_add_are_other_vehicles() {
        assert_eq!(
            VehicleKind::of("bicycle", "hydrogen_fuel_cell"),
            VehicleKind::Other
        );
        assert_eq!(VehicleKind::of("hoverboard", "human"), VehicleKind::Other);
        assert_eq!(
            VehicleKind::of("cargo_bicycle", "human"),
            VehicleKind::Mechanical
        );
        assert_eq!(VehicleKind::of("bicycle", "electric"), VehicleKind::Ebike);
        // Spelling is not meaning: case does not change a type.
        let shouting = br#"{"data": {"vehicle_types": [{"vehicle_type_id": "a", "form_factor": "Bicycle", "propulsion_type": "HUMAN"}]}}"#;
        assert_eq!(
            parse_vehicle_types(shouting).unwrap().kind("a"),
            Some(VehicleKind::Mechanical)
        );
    }
}
